"""One iteration of each stage, as losses over the networks (METHOD.md).

These functions compute losses and metrics; the trainer calls backward/step on the engines.
Call order per NP-Edit step, identical on every rank: text encoder (1 call) -> student (k passes)
-> judge (encode edited, encode refs, answer) -> real score (1 call, cond+uncond batched) -> fake
score (1 call, no grad); then per critic update: text encoder, student (k' passes, no grad), fake.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from npedit.config import Config, MethodConfig
from npedit.data.example import EditBatch
from npedit.method import losses
from npedit.method.judge_views import judge_views
from npedit.method.questions import DO_NOTHING, build_questions
from npedit.method.schedule import (rand, randn, rank_generator, sample_unroll_depth, shared_generator,
                                    student_timesteps, vlm_logit_scale)
from npedit.method.unroll import unroll_student
from npedit import ops


@dataclass
class Networks:
    student: Any        # trainable engine (or module): student(x_t, t, text, ref) -> v
    fake: Any           # trainable engine (or module): fake(x_t, t, text) -> v
    real: Any           # frozen real score module
    diffusion: Any      # BuiltinDiffusion-like: encode_text, velocity, encode_images, decode_latents
    judge: Any          # BuiltinJudge-like: answer_losses


def _module(net):
    """The plain module of an engine: for calls that must stay out of the engine's bookkeeping."""
    return getattr(net, "module", net)


def _t_view(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return t.view(-1, *([1] * (like.ndim - 1)))


def student_velocity(nets: Networks, student, text: torch.Tensor, ref: torch.Tensor):
    return lambda x_t, t: nets.diffusion.velocity(student, x_t, t, text, ref)


def dmd_prompts(batch: EditBatch, nothing: list[bool], m: MethodConfig) -> list[str]:
    """The prompt the real and fake scores see per sample (METHOD.md step 3): the caption of the wanted
    result (the batch's DMD caption where it has one, else the target caption), the reference's caption
    for a do-nothing sample; with method.dmd_condition="unconditional", the negative prompt for every
    sample (the real score's CFG then reduces to its unconditional branch)."""
    if m.dmd_condition == "unconditional":
        return [m.negative_prompt] * len(batch)
    return [c if n else s for n, c, s in zip(nothing, batch.captions, batch.dmd_target_captions())]


def npedit_student_loss(nets: Networks, batch: EditBatch, step: int, cfg: Config, rank: int):
    """-> (loss, metrics, x0.detach()). METHOD.md steps 1-5."""
    m, seed = cfg.method, cfg.train.seed
    b = len(batch)
    device = batch.images.device
    nothing = rand((b,), rank_generator(seed, step, rank, "nothing")) < m.nothing_prob     # [B] bool
    instructions = [DO_NOTHING if n else s for n, s in zip(nothing.tolist(), batch.instructions)]
    text = nets.diffusion.encode_text(instructions + dmd_prompts(batch, nothing.tolist(), m)
                                      + [m.negative_prompt] * b)
    instr_emb, cap_emb, neg_emb = text[:b], text[b:2 * b], text[2 * b:]
    ref_latent = nets.diffusion.encode_images(batch.images)

    # 1. unroll (k shared by all ranks), gradients through every pass
    timesteps = student_timesteps(m)
    k = sample_unroll_depth(seed, step, len(timesteps))
    x0 = unroll_student(student_velocity(nets, nets.student, instr_emb, ref_latent), tuple(ref_latent.shape),
                        k, timesteps, rank_generator(seed, step, rank, "unroll"), device)

    # 2. VLM feedback through the decoder and the judge; with vlm_weight = 0 (the DMD-only ablation)
    #    it is only logged: no graph, so no backward through the judge and the decoder (same gradients)
    questions, weights = build_questions(batch, m.identity_question, skip=nothing, style=m.question_style)
    tau = vlm_logit_scale(step - cfg.train.warmup_stage_steps, m)   # the ramp starts with the NP-Edit stage
    with torch.set_grad_enabled(torch.is_grad_enabled() and m.vlm_weight != 0):
        edited = nets.diffusion.decode_latents(x0)
        seen, refs_seen = judge_views(edited, batch.images, m.judge_view_noise, m.judge_view_shift,  # off: as they are
                                      rank_generator(seed, step, rank, "judge_view"))
        per_question = nets.judge.answer_losses(questions, seen, refs_seen, tau)
        loss_vlm = losses.weighted_mean(per_question, weights)

    # 3. DMD at a random t; no backprop through either score network
    gen = rank_generator(seed, step, rank, "dmd")
    t = (m.dmd_t_min + (m.dmd_t_max - m.dmd_t_min) * rand((b,), gen)).to(device)
    x_t, _ = ops.flow_noise(x0.detach(), randn(x0.shape, gen, device), t)
    hard = torch.tensor([c in m.hard_categories for c in batch.categories], device=device)
    w = torch.where(hard, torch.full_like(t, m.cfg_scale_hard), torch.full_like(t, m.cfg_scale))
    with torch.no_grad():
        v_both = nets.diffusion.velocity(_module(nets.real), torch.cat([x_t, x_t]), torch.cat([t, t]),
                                         nets.diffusion.cat_text([cap_emb, neg_emb]))
        v_real = losses.cfg_velocity(v_both[:b], v_both[b:], w)
        v_fake = nets.diffusion.velocity(_module(nets.fake), x_t, t, cap_emb)
        x_real = x_t - _t_view(t, x_t) * v_real
        x_fake = x_t - _t_view(t, x_t) * v_fake
    loss_dmd = losses.dmd_loss(x0, x_real, x_fake)

    # 4. do-nothing regulariser
    loss_nothing = losses.do_nothing_loss(x0, ref_latent, nothing)

    loss = m.vlm_weight * loss_vlm + m.dmd_weight * loss_dmd + m.nothing_weight * loss_nothing
    metrics = {"loss_vlm": loss_vlm.detach(), "loss_dmd": loss_dmd.detach(), "loss_nothing": loss_nothing.detach(),
               "loss_student": loss.detach(), "unroll_k": float(k), "vlm_tau": tau,
               "vlm_answer_acc": losses.weighted_mean((per_question.detach() < 0.6931).float(), weights)}
    return loss, metrics, x0.detach()


@torch.no_grad()
def student_samples(nets: Networks, batch: EditBatch, step: int, cfg: Config, rank: int, stream_step: int):
    """Detached student samples for a critic update: -> (x0 [B,C,h,w], caption embeddings [B,L,D])."""
    m, seed = cfg.method, cfg.train.seed
    b = len(batch)
    text = nets.diffusion.encode_text(list(batch.instructions) + dmd_prompts(batch, [False] * b, m))
    ref_latent = nets.diffusion.encode_images(batch.images)
    timesteps = student_timesteps(m)
    k = sample_unroll_depth(seed + 7919, stream_step, len(timesteps))
    gen = rank_generator(seed, stream_step, rank, "critic_sample")
    x0 = unroll_student(student_velocity(nets, _module(nets.student), text[:b], ref_latent),
                        tuple(ref_latent.shape), k, timesteps, gen, batch.images.device)
    return x0, text[b:]


def fake_score_loss(nets: Networks, x0: torch.Tensor, cap_emb: torch.Tensor, cfg: Config, rank: int,
                    stream_step: int) -> torch.Tensor:
    """Flow matching of the fake score on detached student samples, t ~ U[0, 1] (METHOD.md step 6)."""
    gen = rank_generator(cfg.train.seed, stream_step, rank, "critic_noise")
    t = rand((x0.shape[0],), gen).to(x0.device)
    x_t, v_target = ops.flow_noise(x0, randn(x0.shape, gen, x0.device), t)
    return losses.flow_matching_loss(nets.diffusion.velocity(nets.fake, x_t, t, cap_emb), v_target)


def warmup_loss(nets: Networks, batch: EditBatch, step: int, cfg: Config, rank: int):
    """Stage 0, reference copy: target = reference, prompt = its caption (or, for a share
    1 - method.warmup_caption_prob of the samples, the do-nothing instruction), flow-matching loss."""
    gen = rank_generator(cfg.train.seed, step, rank, "warmup")
    ref_latent = nets.diffusion.encode_images(batch.images)
    keep = rand((len(batch),), rank_generator(cfg.train.seed, step, rank, "warmup_prompt"))
    prompts = [c if k < cfg.method.warmup_caption_prob else DO_NOTHING for c, k in zip(batch.captions, keep.tolist())]
    text = nets.diffusion.encode_text(prompts)
    t = rand((len(batch),), gen).to(ref_latent.device)
    x_t, v_target = ops.flow_noise(ref_latent, randn(ref_latent.shape, gen, ref_latent.device), t)
    loss = losses.flow_matching_loss(nets.diffusion.velocity(nets.student, x_t, t, text, ref_latent), v_target)
    return loss, {"loss_warmup": loss.detach(), "loss_student": loss.detach()}


__all__ = ["Networks", "npedit_student_loss", "student_samples", "fake_score_loss", "warmup_loss",
           "shared_generator"]
