"""The training loop: warm-up (reference copy) steps, then NP-Edit steps; logging, samples, checkpoints.

Everything that can be wrong with the inputs (config, DeepSpeed JSON, data, model folders) is
checked before any engine is built. Steps are numbered by how many have completed; the data
position is derived from the step, so a resumed run sees exactly the batches it would have seen.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import torch
from tqdm import tqdm

from npedit.build import ModelPlan, RunModels, default_words
from npedit.config import Config, ConfigError
from npedit.data.loader import StepLoader
from npedit.data.manifest import ManifestDataset, read_manifest
from npedit.data.shapes import ShapesEditDataset
from npedit.data.example import collate
from npedit.engine.checkpoint import latest_checkpoint, list_checkpoints, load_checkpoint, save_checkpoint
from npedit.engine.distributed import barrier, init_distributed, mean_across_ranks
from npedit.engine.ds_config import base_ds_config
from npedit.engine.engines import Engines, build_engines, grad_norm
from npedit.method.schedule import rank_generator, student_timesteps
from npedit.method.step import Networks, fake_score_loss, npedit_student_loss, student_samples, warmup_loss
from npedit.inference import edit_images
from npedit.outputs import MetricsLog, save_sample_grid


def build_dataset(cfg: Config):
    if cfg.data.kind == "shapes":
        return ShapesEditDataset(num_examples=cfg.data.num_examples, image_size=cfg.data.image_size,
                                 seed=cfg.train.seed, categories=tuple(cfg.data.categories),
                                 dmd_caption_keep=cfg.data.dmd_caption_keep)
    return ManifestDataset(cfg.data.manifest, image_size=cfg.data.image_size)


def vocabulary_for(cfg: Config) -> list[str]:
    if cfg.data.kind == "manifest":
        records = read_manifest(cfg.data.manifest)
        texts = [r.get(k, "") for r in records for k in ("instruction", "caption", "target_caption", "object")]
        return default_words(texts)
    return default_words()


def networks_for(engines: Engines, models: RunModels, cfg: Config) -> Networks:
    """The method's view of the engines: trainable engines, frozen modules, family adapters."""
    diffusion, judge = models.plan.networks(engines.modules)
    return Networks(engines.student, engines.fake, engines.real, diffusion, judge)


class Trainer:
    def __init__(self, cfg: Config, output_dir: str | Path, ds_user: dict | None = None,
                 ds_source: str = "generated", resume: bool = False):
        self.cfg, self.output_dir, self.resume = cfg, Path(output_dir), resume
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if list_checkpoints(self.output_dir) and not resume:
            raise ConfigError(f"{self.output_dir} already holds checkpoints; pass --resume to continue that run "
                              "or choose another --output_dir")
        if resume and cfg.train.max_steps <= 0:
            raise ConfigError("train.max_steps must be > 0")
        # checks that need no engine: DeepSpeed JSON, data, model folders and families, sizes, prompts
        self.base_ds = base_ds_config(cfg, world, ds_user, ds_source)
        self.dataset = build_dataset(cfg)
        words = vocabulary_for(cfg)
        self.plan = ModelPlan(cfg, words, self.dataset)

        self.rank, self.world, self.device = init_distributed()
        # published models are created ZeRO-3-partitioned (zero.Init / HfDeepSpeedConfig) as they load
        self.models = self.plan.build(self.base_ds)
        self.engines = build_engines(self.models, cfg, self.base_ds, self.device)
        self.nets = networks_for(self.engines, self.models, cfg)
        self.loader = StepLoader(self.dataset, cfg.data.batch_size, self.rank, self.world, cfg.train.seed)
        self.sample_batch = collate([self.dataset[len(self.dataset) - 1 - i]
                                     for i in range(min(cfg.train.num_samples, len(self.dataset)))])
        self.log = MetricsLog(self.output_dir, cfg.train.tensorboard) if self.rank == 0 else None
        self.start_step = 0
        if resume:
            ckpt = latest_checkpoint(self.output_dir)
            if ckpt is not None:
                self.start_step = load_checkpoint(ckpt, self.engines, self.rank, self.world)
                if self.log is not None:
                    self.log.truncate_after(self.start_step)

    # ------------------------------------------------------------------ one step of each stage
    def _data_index(self, step: int, offset: int = 0) -> int:
        return step * (1 + self.cfg.method.fake_updates) + offset

    def warmup_step(self, step: int) -> dict:
        batch = self.loader.batch(self._data_index(step)).to(self.device)
        loss, metrics = warmup_loss(self.nets, batch, step, self.cfg, self.rank)
        self.engines.student.backward(loss)
        self.engines.student.step()
        return {**metrics, "grad_norm": grad_norm(self.engines.student)}

    def npedit_step(self, step: int) -> dict:
        cfg, eng = self.cfg, self.engines
        batch = self.loader.batch(self._data_index(step)).to(self.device)
        loss, metrics, _ = npedit_student_loss(self.nets, batch, step, cfg, self.rank)
        eng.student.backward(loss)
        eng.student.step()
        metrics["grad_norm"] = grad_norm(eng.student)
        fake_losses = []
        # two time-scale rule: N_aux critic updates per student update; none when dmd_weight = 0 (the
        # VLM-only ablation), where the fake score reaches no loss (data and random streams unchanged)
        critic_updates = cfg.method.fake_updates if cfg.method.dmd_weight != 0 else 0
        for j in range(critic_updates):
            index = self._data_index(step, 1 + j)
            aux = self.loader.batch(index).to(self.device)
            x0, cap_emb = student_samples(self.nets, aux, step, cfg, self.rank, stream_step=index)
            loss_fake = fake_score_loss(self.nets, x0, cap_emb, cfg, self.rank, stream_step=index)
            eng.fake.backward(loss_fake)
            eng.fake.step()
            fake_losses.append(float(loss_fake.detach()))
        metrics["loss_fake"] = sum(fake_losses) / len(fake_losses) if fake_losses else float("nan")
        metrics["grad_norm_fake"] = grad_norm(eng.fake) if fake_losses else float("nan")
        return metrics

    # ------------------------------------------------------------------ outputs
    @torch.no_grad()
    def edit(self, images: torch.Tensor, instructions: list[str], seed: int = 0) -> torch.Tensor:
        """4-step inference with the current student: [B,3,S,S] in [0,1] -> [B,3,S,S].
        Every rank must call it (ZeRO-3 gathers the student's parameters collectively)."""
        gen = rank_generator(self.cfg.train.seed + seed, 0, 0, "sample")
        return edit_images(self.nets.diffusion, self.engines.student.module, images.to(self.device), instructions,
                           student_timesteps(self.cfg.method), gen)

    def write_samples(self, step: int) -> Path | None:
        """Sample grid on a fixed set of examples (every rank runs the inference)."""
        batch = self.sample_batch
        images = self.edit(batch.images, batch.instructions)
        if self.rank != 0:
            return None
        return save_sample_grid(self.output_dir / "samples" / f"step_{step}.png", batch.images.cpu(),
                                images.cpu(), [f"[{c}] {s}" for c, s in zip(batch.categories, batch.instructions)])

    @property
    def makes_oracle_report(self) -> bool:
        """Shapes world with train.oracle_eval_examples > 0: reports before and after training."""
        return self.cfg.data.kind == "shapes" and self.cfg.train.oracle_eval_examples > 0

    @property
    def oracle_report_path(self) -> Path:
        return self.output_dir / "oracle_report.json"

    def has_oracle_report(self, when: str) -> bool:
        """Whether rank 0's oracle_report.json holds `when` already (True for runs that make no oracle
        report). A collective: every rank gets rank 0's answer (the report itself is one too, and other
        ranks may not see rank 0's files)."""
        if not self.makes_oracle_report:
            return True
        path = self.oracle_report_path
        missing = self.rank == 0 and not (path.is_file() and when in json.loads(path.read_text()))
        return mean_across_ranks({"missing": float(missing)})["missing"] == 0

    def oracle_report(self, when: str) -> dict | None:
        """Shapes world only: edit held-out scenes and score them against the renderer's truth."""
        if not self.makes_oracle_report:
            return None
        from npedit.eval.shapes_eval import evaluate_editor, format_report

        report = evaluate_editor(self.edit, num_examples=self.cfg.train.oracle_eval_examples,
                                 image_size=self.cfg.data.image_size, categories=tuple(self.cfg.data.categories))
        if self.rank == 0:
            path = self.oracle_report_path
            reports = json.loads(path.read_text()) if path.is_file() else {}
            reports[when] = report
            path.write_text(json.dumps(reports, indent=2))
            tqdm.write(f"oracle report ({when}):\n{format_report(report)}")
        return report

    def checkpoint(self, step: int) -> None:
        save_checkpoint(self.output_dir, step, self.engines, self.models, self.cfg.to_dict(), self.rank,
                        self.world, self.cfg.train.keep_checkpoints)

    def close(self) -> None:
        """After `run` (which closed the metrics log) on every rank: release the engines."""
        self.engines.destroy()

    # ------------------------------------------------------------------ loop
    def run(self) -> dict:
        cfg = self.cfg.train
        last: dict = {}
        if self.start_step == 0:
            self.oracle_report("before")
        bar = tqdm(total=cfg.max_steps, initial=self.start_step, disable=self.rank != 0, desc="train",
                   dynamic_ncols=True)
        for step in range(self.start_step, cfg.max_steps):
            t0 = time.perf_counter()
            stage = "warmup" if step < cfg.warmup_stage_steps else "npedit"
            metrics = self.warmup_step(step) if stage == "warmup" else self.npedit_step(step)
            done = step + 1
            metrics = mean_across_ranks({k: v for k, v in metrics.items()})
            row = {"step": done, "stage": stage, "loss_vlm": None, "loss_dmd": None, "loss_fake": None,
                   **{k: (None if v != v else v) for k, v in metrics.items()},
                   "lr": float(self.engines.student.get_lr()[0]), "time_s": time.perf_counter() - t0}
            last = row
            if self.log is not None and (done % cfg.log_every == 0 or done == cfg.max_steps):
                self.log.log(row)
            bar.set_postfix({k: f"{row[k]:.3g}" for k in ("loss_student", "loss_vlm", "loss_dmd", "loss_fake")
                             if isinstance(row.get(k), float)})
            bar.update(1)
            if done % cfg.sample_every == 0 or done == cfg.max_steps:
                self.write_samples(done)
            if done % cfg.checkpoint_every == 0 or done == cfg.max_steps:
                self.checkpoint(done)
        bar.close()
        if self.start_step < cfg.max_steps or not self.has_oracle_report("after"):
            self.oracle_report("after")   # also for a run stopped between its last checkpoint and this report
        if self.log is not None:
            self.log.close()
        barrier()
        return last
