"""A transformers VLM (Qwen2-VL, Qwen2.5-VL, LLaVA-OneVision, InternVL) as the NP-Edit judge.

`HFJudgeSpec` reads the folder (config, preprocessor config, tokenizer, chat template) and checks
everything that can be checked without weights, before any engine exists: image size, single-token
Yes/No answers, prompt length. `JudgeModule` wraps the loaded model; its forward runs the whole judge
(vision features of the distinct images, the LM on every question) and hands the hidden states at the
answer positions to its `AnswerHead` child, whose forward computes the loss with the LM-head weight
(a ZeRO-3 external parameter of that child, so it is gathered just around the loss). Only those
hidden states reach the loss: no [tokens x vocabulary] logits.
`HFJudge` is the adapter the method calls: answer_losses(questions, edited, refs, scale) -> [Q].
"""
from __future__ import annotations

import re

import torch
from torch import nn

from npedit import ops
from npedit.adapters.hf_checkpointing import set_layer_checkpointing
from npedit.adapters.select import VLM_FAMILIES, detect_vlm, read_json
from npedit.adapters.vlm_families import FAMILY_CLASSES, VLMFamily
from npedit.config import ConfigError
from npedit.engine.zero_rows import binary_answer_loss_rows, gather_rows
from npedit.method.questions import YES, Question

YES_WORD, NO_WORD = "Yes", "No"
ANSWER_INSTRUCTION = "Answer with Yes or No."


def natural_question(text: str) -> str:
    """The method's templates are written for word-level tokenizers ("was the edit \" x \" carried out ?");
    give a real tokenizer ordinary text: no space before punctuation, quotes hugging their words, sentence case."""
    text = re.sub(r'"\s*(.*?)\s*"', r'"\1"', text)
    text = re.sub(r"\s+([?.,!])", r"\1", text).strip()
    sentences = re.split(r"(?<=[.?!])\s+", text)
    return " ".join(s[:1].upper() + s[1:] for s in sentences if s)


def answer_token_id(tokenizer, word: str, field: str) -> int:
    ids = tokenizer.encode(word, add_special_tokens=False)
    if len(ids) != 1:
        pieces = tokenizer.convert_ids_to_tokens(ids)
        raise ConfigError(f"{field}: the judge's tokenizer splits the answer {word!r} into {len(ids)} tokens {pieces}; "
                          "the Yes/No loss needs each answer to be a single token")
    return ids[0]


class HFJudgeSpec:
    """Everything about a transformers judge that needs no weights; `build` loads the model."""

    def __init__(self, source: str, image_size: int = 0, answer_loss: str = "binary", field: str = "vlm.pretrained",
                 attention: str = "npedit"):
        from transformers import AutoTokenizer

        self.source, self.field, self.answer_loss, self.attention = source, field, answer_loss, attention
        self.family_name = detect_vlm(source, field)
        if self.family_name not in FAMILY_CLASSES:
            raise ConfigError(f"{field}={source!r} is not a transformers judge")
        self.config = read_json(source, "config.json", field)
        preproc = read_json(source, "preprocessor_config.json", field, required=False) or {}
        processor = read_json(source, "processor_config.json", field, required=False) or {}
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(source)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{field}={source!r}: cannot load its tokenizer ({exc})") from exc
        legacy = read_json(source, "chat_template.json", field, required=False) or {}
        self.chat_template = legacy.get("chat_template") or self.tokenizer.chat_template
        if not self.chat_template:
            raise ConfigError(f"{field}={source!r}: no chat template (chat_template.jinja / chat_template.json / "
                              "tokenizer_config.json); the judge's prompts are rendered with it")
        self.family: VLMFamily = FAMILY_CLASSES[self.family_name](self.config, preproc, processor, self.tokenizer,
                                                                  image_size, field)
        if self.tokenizer.convert_tokens_to_ids(self.family.image_token) in (None, self.tokenizer.unk_token_id):
            raise ConfigError(f"{field}={source!r}: the tokenizer has no image token {self.family.image_token!r}")
        self.yes_id = answer_token_id(self.tokenizer, YES_WORD, field)
        self.no_id = answer_token_id(self.tokenizer, NO_WORD, field)
        text_config = self.config.get("text_config") or self.config
        self.max_length = int(text_config.get("max_position_embeddings", 32768))
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0

    # ------------------------------------------------------------------ prompts
    def prompt(self, question: Question) -> str:
        content = [{"type": "image"} for _ in question.images]
        content.append({"type": "text", "text": f"{natural_question(question.text)} {ANSWER_INSTRUCTION}"})
        text = self.tokenizer.apply_chat_template([{"role": "user", "content": content}],
                                                  chat_template=self.chat_template, add_generation_prompt=True,
                                                  tokenize=False)
        return self.family.expand(text, len(question.images))

    def tokenize(self, questions: list[Question], device=None):
        """-> input_ids [Q, T] and attention_mask [Q, T] (right-padded), answer positions [Q]."""
        rows = [self.tokenizer.encode(self.prompt(q), add_special_tokens=False) for q in questions]
        for q, row in zip(questions, rows):
            if len(row) > self.max_length:
                raise ValueError(f"{self.field}: the judge prompt for {q.text!r} is {len(row)} tokens (images "
                                 f"included), longer than the model's limit max_position_embeddings="
                                 f"{self.max_length}")
        length = max(len(r) for r in rows)
        ids = torch.full((len(rows), length), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), length), dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, :len(row)] = torch.tensor(row)
            mask[i, :len(row)] = 1
        positions = torch.tensor([len(r) - 1 for r in rows])
        return ids.to(device), mask.to(device), positions.to(device)

    def check_questions(self, questions: list[Question]) -> None:
        """Raise (ConfigError) before training when any of these questions would not fit the model."""
        try:
            self.tokenize(questions)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None

    # ------------------------------------------------------------------ model
    def build(self, dtype: torch.dtype, ds_config: dict | None) -> JudgeModule:
        import transformers

        from npedit.adapters.zero_load import load_transformers

        cls = getattr(transformers, VLM_FAMILIES[self.family_name])
        if self.attention == "npedit":
            from npedit.adapters.hf_attention import register_transformers_attention
            register_transformers_attention()
        vlm = load_transformers(cls, self.source, "", dtype, ds_config, attn_implementation=self.attention)
        vlm.requires_grad_(False)
        return JudgeModule(vlm, self.family).eval()


class AnswerHead(nn.Module):
    """The answer loss from answer-position hidden states, inside this module's forward so that ZeRO-3
    gathers the LM-head weight (an external parameter here) only around the loss, not the whole VLM.
    The judge's default Yes/No loss bypasses it and gathers only the two answer rows
    (`npedit.engine.zero_rows`); the vocabulary loss and the logits need the whole head."""

    def __init__(self, lm_head: nn.Module):
        super().__init__()
        self._lm_head = (lm_head,)  # a reference, not a child: the head stays registered once, in the VLM
        import deepspeed

        deepspeed.zero.register_external_parameter(self, lm_head.weight)

    def forward(self, hidden: torch.Tensor, first_ids: torch.Tensor, second_ids: torch.Tensor | None,
                scale: float, mode: str) -> torch.Tensor:
        """hidden [Q, D] -> binary: -log sigmoid(scale (l_first - l_second)) [Q]; vocab: CE on first_ids [Q];
        logits: (l_first, l_second) [Q, 2]. fp32."""
        weight = self._lm_head[0].weight                                       # [V, D]
        if mode == "binary":
            return ops.binary_answer_loss(hidden, weight, first_ids, second_ids, scale)
        if mode == "vocab":
            return ops.vocab_answer_loss(hidden, weight, first_ids, scale)
        if mode == "logits":
            rows = weight[torch.stack([first_ids, second_ids], dim=1)]         # [Q, 2, D]
            return torch.einsum("qd,qkd->qk", hidden.float(), rows.float())
        raise ValueError(f"AnswerHead: unknown mode {mode!r}")


class RowEmbedding(nn.Module):
    """A frozen token embedding that reads only the rows it is asked for (`zero_rows.gather_rows`), so
    ZeRO-3 never gathers the whole table (1 GiB for a 152k x 3584 bf16 one). The table stays registered,
    in `table`, an `nn.Embedding` that is never called (a called module's weights would be gathered)."""

    row_gathered = ("table",)

    def __init__(self, embedding: nn.Embedding):
        super().__init__()
        self.table = embedding

    @property
    def weight(self) -> nn.Parameter:
        return self.table.weight

    @property
    def num_embeddings(self) -> int:
        return self.table.num_embeddings

    @property
    def embedding_dim(self) -> int:
        return self.table.embedding_dim

    @property
    def padding_idx(self):
        return self.table.padding_idx

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return gather_rows(self.table.weight, input_ids)


class JudgeModule(nn.Module):
    """The VLM plus the judge's forward. forward(...) -> loss [Q] fp32 (or Yes/No logits [Q, 2] for tests)."""

    answer_rows = ("answer_head",)   # the Yes/No answer loss reads two rows of it (zero_rows), never the whole

    def __init__(self, vlm: nn.Module, family: VLMFamily):
        super().__init__()
        self.vlm = vlm
        self.family = family
        family.prepare(vlm)
        self.answer = AnswerHead(vlm.get_output_embeddings())
        if type(vlm.get_input_embeddings()) is nn.Embedding:   # a plain table (no scaling subclass)
            vlm.set_input_embeddings(RowEmbedding(vlm.get_input_embeddings()))
        import deepspeed

        for param in family.external_parameters(vlm):
            deepspeed.zero.register_external_parameter(self, param)  # used here, outside their modules' forward

    def set_checkpointing(self, mode: str) -> None:
        """none | full | selective, per layer of the VLM (vision blocks, LM decoder layers) while it runs
        with grad: `npedit.adapters.hf_checkpointing`."""
        set_layer_checkpointing(self.vlm, mode)

    @property
    def answer_head(self) -> nn.Module:
        """The VLM's LM head (registered in the VLM, read by the answer losses)."""
        return self.vlm.get_output_embeddings()

    def answer_hidden(self, edited: torch.Tensor, refs: torch.Tensor, slots: list[tuple[tuple[str, int], ...]],
                      input_ids: torch.Tensor, attention_mask: torch.Tensor,
                      answer_pos: torch.Tensor) -> torch.Tensor:
        """edited (with grad) / refs [B,3,H,W] in [0,1]; slots: per question ((\"ref\"|\"edit\", sample), ...)
        -> final hidden state at each answer position [Q, D]."""
        fam, vlm = self.family, self.vlm
        feats = {"edit": fam.image_features(vlm, fam.pixels(edited))}
        with torch.no_grad():  # reference-image features need no gradient
            feats["ref"] = fam.image_features(vlm, fam.pixels(refs))
        per_question = []
        for slot in slots:
            per_question += fam.question_features(vlm, [feats[name][i] for name, i in slot])
        n_images = sum(len(s) for s in slots)
        out = vlm.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False,
                        mm_encoder_outputs={"image": fam.encoder_output(per_question)},
                        **fam.lm_kwargs(input_ids, n_images))
        hidden = out.last_hidden_state                                         # [Q, T, D]
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), answer_pos]

    def forward(self, edited, refs, slots, input_ids, attention_mask, answer_pos, first_ids: torch.Tensor,
                second_ids: torch.Tensor | None = None, scale: float = 1.0, mode: str = "binary") -> torch.Tensor:
        """mode binary: -log sigmoid(scale (l_first - l_second)); vocab: CE on first_ids; logits: [Q, 2]."""
        hidden = self.answer_hidden(edited, refs, slots, input_ids, attention_mask, answer_pos)
        if mode == "binary":   # two rows of the head: read them without calling AnswerHead (no whole-head gather)
            return binary_answer_loss_rows(hidden, self.answer_head.weight, first_ids, second_ids, scale)
        return self.answer(hidden, first_ids, second_ids, scale, mode)


class HFJudge:
    """The method's judge adapter over a (frozen, possibly ZeRO-3) JudgeModule."""

    def __init__(self, module: JudgeModule, spec: HFJudgeSpec):
        self.module, self.spec = module, spec

    def _inputs(self, questions: list[Question], device):
        ids, mask, pos = self.spec.tokenize(questions, device)
        slots = [tuple((name, q.sample) for name in q.images) for q in questions]
        return slots, ids, mask, pos

    def answer_losses(self, questions: list[Question], edited: torch.Tensor, refs: torch.Tensor,
                      scale: float) -> torch.Tensor:
        """edited [B,3,H,W] (with grad), refs [B,3,H,W] in [0,1] -> per-question loss [Q] fp32."""
        device = edited.device
        slots, ids, mask, pos = self._inputs(questions, device)
        yes = torch.tensor([q.answer == YES for q in questions], device=device)
        correct = torch.where(yes, self.spec.yes_id, self.spec.no_id)
        if self.spec.answer_loss == "vocab":
            return self.module(edited, refs, slots, ids, mask, pos, correct, None, scale, "vocab")
        wrong = torch.where(yes, self.spec.no_id, self.spec.yes_id)
        return self.module(edited, refs, slots, ids, mask, pos, correct, wrong, scale, "binary")

    @torch.no_grad()
    def yes_no_logits(self, questions: list[Question], edited: torch.Tensor, refs: torch.Tensor) -> torch.Tensor:
        """[Q, 2] logits of (Yes, No) at the answer positions (tests and diagnostics)."""
        device = edited.device
        slots, ids, mask, pos = self._inputs(questions, device)
        yes = torch.full((len(questions),), self.spec.yes_id, device=device)
        no = torch.full((len(questions),), self.spec.no_id, device=device)
        return self.module(edited, refs, slots, ids, mask, pos, yes, no, 1.0, "logits")
