"""The text loss, the pause-head loss and one training step, with answers derived by hand.

What the pause heads learn is decided here, so every convention is pinned by a known answer:
- class 0 of each head's 6 outputs is "pause". Kyutai's runtime reads it so: the Rust crate
  moshi 0.6.4 (`src/asr.rs`) sends `softmax_last_dim(extra_head).i((.., 0, 0))` per head as
  `AsrMsg::Step { prs }` ("only retrieve the first element for each extra-head"), moshi-server
  0.6.4 forwards `p[0]` of each in its `Step` messages, and Kyutai's clients end the turn on
  `prs[2] > 0.5` (the stt-rs example) or on an EMA of `prs[2]` above 0.6 (Unmute). PyTorch moshi
  0.2.13's `LMGen.step_with_extra_heads` returns the same softmax per head. (The project's
  research notes: ../shared/research/candle.md, "VAD read-out"; finetune.md, "class 0 is P(pause)".)
- masked frames (IGNORE text, head_mask 0) carry no weight; PAD and EPAD text targets weigh
  `train.text_padding_weight`;
- the head loss is a binary cross-entropy on P(pause): lowest, with a zero gradient, where
  P(pause) equals the target;
- `train.head_loss=distill` takes its targets from the frozen base (LoRA disabled) and leaves
  number frames out; `none` trains no head.

The training-step tests run `train_step` on a model of a few weights whose outputs are set by
hand (`ToyStt`): every logit, so every loss and gradient, is known in closed form.
"""

from __future__ import annotations

import math

import pytest
import torch

from pipeline import train as tr
from pipeline.config import load_config
from pipeline.labels import EPAD, IGNORE, PAD

LN2 = math.log(2)


def logits_of(probs) -> torch.Tensor:
    """Logits whose softmax is `probs` (log-probabilities)."""
    return torch.tensor(probs, dtype=torch.float64).log().float()


# --- text_loss --------------------------------------------------------------------------------

# Six text classes: 0 = EPAD, 3 = PAD, 1, 2, 4, 5 = word tokens. Each row sums to 1.
P_WORD1 = [1 / 8, 1 / 2, 1 / 8, 1 / 8, 1 / 16, 1 / 16]   # P(1) = 1/2, P(EPAD) = 1/8
P_PAD = [1 / 16, 1 / 16, 1 / 8, 1 / 2, 1 / 8, 1 / 8]     # P(PAD) = 1/2, P(EPAD) = 1/16
P_EPAD = [1 / 4, 1 / 4, 1 / 8, 1 / 8, 1 / 8, 1 / 8]      # P(EPAD) = 1/4


def test_text_loss_weighs_words_one_padding_by_the_padding_weight_and_ignored_frames_zero():
    # Frames: a word token (P = 1/2: CE ln 2, weight 1), PAD (P = 1/2: ln 2, weight w),
    # EPAD (P = 1/4: 2 ln 2, weight w), IGNORE (weight 0; read as class 0 it would add 3 ln 2).
    logits = torch.stack([logits_of(P_WORD1), logits_of(P_PAD), logits_of(P_EPAD), logits_of(P_WORD1)])[None]
    target = torch.tensor([[1, PAD, EPAD, IGNORE]])
    # loss = (ln2 + w ln2 + 2w ln2) / (1 + 2w) = ln2 (1 + 3w) / (1 + 2w)
    for w in (0.0, 0.25, 0.5, 1.0):
        expected = LN2 * (1 + 3 * w) / (1 + 2 * w)
        assert tr.text_loss(logits, target, w).item() == pytest.approx(expected, rel=1e-6), w
    # w = 0.25: 1.75 ln2 / 1.5 = (7/6) ln 2. Weighting PAD alone (EPAD at 1) would give
    # (1 + 0.25 + 2) ln2 / 2.25 = (13/9) ln 2; counting the IGNORE frame, (1.75 + 3) ln2 / 2.5.
    assert tr.text_loss(logits, target, 0.25).item() == pytest.approx(7 / 6 * LN2, rel=1e-6)


def test_text_loss_is_a_mean_over_the_weights_across_the_batch_and_zero_when_nothing_counts():
    # Two windows of two frames: [word (ln 2), IGNORE] and [EPAD (2 ln 2), word (ln 2)].
    logits = torch.stack([torch.stack([logits_of(P_WORD1), logits_of(P_EPAD)]),
                          torch.stack([logits_of(P_EPAD), logits_of(P_WORD1)])])
    target = torch.tensor([[1, IGNORE], [EPAD, 1]])
    # w = 0.5: (ln2 + 0.5 * 2 ln2 + ln2) / (1 + 0.5 + 1) = 3 ln2 / 2.5 = 1.2 ln 2
    assert tr.text_loss(logits, target, 0.5).item() == pytest.approx(1.2 * LN2, rel=1e-6)
    # Nothing known: 0, not NaN (the window was all padding frames).
    assert tr.text_loss(logits, torch.full((2, 2), IGNORE), 0.5).item() == 0.0


def test_text_loss_reads_the_classes_on_the_last_dim():
    # Batch 1, 3 frames, 6 classes: a [B, V, T] reading would mix frames and classes.
    logits = torch.stack([logits_of(P_WORD1), logits_of(P_PAD), logits_of(P_EPAD)])[None]
    target = torch.tensor([[1, 1, 1]])
    # CE of class 1: ln 2 (P 1/2), 4 ln 2 (P 1/16), 2 ln 2 (P 1/4); mean 7/3 ln 2
    assert tr.text_loss(logits, target, 0.5).item() == pytest.approx(7 / 3 * LN2, rel=1e-6)


# --- pause_log_probs and head_loss ---------------------------------------------------------------

def head_logits(p_pause: float) -> torch.Tensor:
    """Six logits with P(class 0) = p_pause and the rest spread evenly over classes 1-5."""
    other = (1 - p_pause) / 5
    return logits_of([p_pause] + [other] * 5)


def test_class_0_is_pause_and_the_other_five_are_not_pause():
    # Logits [ln 3, 0, 0, 0, 0, 0]: softmax = [3/8, 1/8 x 5], so P(pause) = 3/8, P(not) = 5/8.
    logits = torch.tensor([math.log(3), 0, 0, 0, 0, 0])
    log_pause, log_other = tr.pause_log_probs(logits)
    assert log_pause.exp().item() == pytest.approx(3 / 8, rel=1e-6)
    assert log_other.exp().item() == pytest.approx(5 / 8, rel=1e-6)
    # Uneven non-pause classes: [ln 2, ln 1, ln 3, ln 4, 0, -inf] -> P = [2, 1, 3, 4, 1, 0] / 11:
    # P(pause) is class 0's 2/11 whatever the split of the other 9/11 among classes 1-5.
    logits = torch.tensor([math.log(2), 0, math.log(3), math.log(4), 0, -float("inf")])
    log_pause, log_other = tr.pause_log_probs(logits)
    assert (log_pause.exp().item(), log_other.exp().item()) == (pytest.approx(2 / 11), pytest.approx(9 / 11))
    # What Kyutai's runtime reads: softmax(...)[0], per head of a [B, T, H, 6] tensor.
    many = torch.randn(2, 3, 4, 6, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(tr.pause_log_probs(many)[0].exp(), torch.softmax(many, -1)[..., 0], atol=1e-6)
    assert tr.pause_log_probs(many)[0].shape == (2, 3, 4)


def test_head_loss_is_binary_cross_entropy_on_p_pause_over_the_masked_frames_and_heads():
    # One window, three frames, two heads. P(pause) per frame: 1/2, 3/4, 1/6 (both heads alike).
    logits = torch.stack([head_logits(p) for p in (1 / 2, 3 / 4, 1 / 6)])[None, :, None].expand(1, 3, 2, 6)
    target = torch.tensor([[[0.0, 1.0], [1.0, 1.0], [0.0, 1.0]]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    # Frame 0: head 0 y=0 -> -ln(1/2) = ln 2; head 1 y=1 -> ln 2.
    # Frame 1: y=1 both -> -ln(3/4) = ln(4/3) each.  Frame 2: masked (it would add ln(6/5) + ln 6).
    # Mean over 2 frames x 2 heads = (2 ln 2 + 2 ln(4/3)) / 4 = ln(8/3) / 2.
    assert tr.head_loss(logits, target, mask).item() == pytest.approx(math.log(8 / 3) / 2, rel=1e-6)
    # Soft targets: y = 0.3 on P = 1/2 -> -(0.3 ln 1/2 + 0.7 ln 1/2) = ln 2 for every cell.
    soft = torch.full((1, 3, 2), 0.3)
    assert tr.head_loss(logits[:, :1], soft[:, :1], mask[:, :1]).item() == pytest.approx(LN2, rel=1e-6)
    # Nothing masked in: 0, not NaN.
    assert tr.head_loss(logits, target, torch.zeros(1, 3)).item() == 0.0


def test_head_loss_says_pause_is_class_0():
    # A head sure of class 0 (P(pause) = 15/20 = 3/4) and another sure of class 1 (P(pause) = 1/20):
    # with target "pause", -ln(3/4) and -ln(1/20). A convention with another class as pause flips them.
    sure_pause = torch.tensor([math.log(15), 0, 0, 0, 0, 0])
    sure_other = torch.tensor([0, math.log(15), 0, 0, 0, 0])
    logits = torch.stack([sure_pause, sure_other])[None, :, None]
    target = torch.ones(1, 2, 1)
    per_frame = [tr.head_loss(logits[:, i:i + 1], target[:, i:i + 1], torch.ones(1, 1)).item() for i in range(2)]
    assert per_frame == [pytest.approx(math.log(4 / 3), rel=1e-6), pytest.approx(math.log(20), rel=1e-6)]


@pytest.mark.parametrize("y", [0.0, 0.1, 0.3, 0.5, 0.9, 1.0])
def test_head_loss_is_lowest_where_p_pause_equals_the_target(y):
    # d/dz_0 of -(y ln p + (1 - y) ln(1 - p)) with p = softmax(z)_0 is p - y; for classes j >= 1 it
    # is p_j (1 - (1 - y) / (1 - p)): both vanish at p = y. Over N masked cells each gets 1/N of it.
    for p in (0.05, 0.25, 0.5, 0.75, 0.95):
        logits = head_logits(p)[None, None, None].repeat(1, 2, 1, 1).requires_grad_(True)  # 2 frames, 1 head
        tr.head_loss(logits, torch.full((1, 2, 1), y), torch.ones(1, 2)).backward()
        grad = logits.grad[0, 0, 0]
        assert grad[0].item() == pytest.approx((p - y) / 2, abs=1e-6), p
        assert grad[1:].tolist() == pytest.approx([(1 - p) / 5 * (1 - (1 - y) / (1 - p)) / 2] * 5, abs=1e-6)
    if 0 < y < 1:  # the minimum over P(pause) lies at y: nearby values on both sides give more
        at = tr.head_loss(head_logits(y)[None, None, None], torch.full((1, 1, 1), y), torch.ones(1, 1)).item()
        entropy = -(y * math.log(y) + (1 - y) * math.log(1 - y))
        assert at == pytest.approx(entropy, rel=1e-5)
        for p in (y - 0.05, y + 0.05):
            if 0 < p < 1:
                assert tr.head_loss(head_logits(p)[None, None, None], torch.full((1, 1, 1), y),
                                    torch.ones(1, 1)).item() > at


# --- train_step under each train.head_loss ----------------------------------------------------

CODES = 3  # the toy model's audio codes: frame t's outputs are set by the code it reads
HEADS = 2
# P(pause) of the base for a frame reading code 0, 1, 2: class-0 logit ln 5, ln 15, 0 against
# five zeros -> 5/10, 15/20, 1/6.
BASE_PAUSE_LOGIT = (math.log(5), math.log(15), 0.0)
# The LoRA of every head adds DELTA to class 0 (distill test): ln 15 + ln 3 = ln 45 -> 45/50 etc.
DELTA = math.log(3)
TEXT_PROBS = (P_WORD1, P_PAD, P_EPAD)  # text distribution of a frame reading code 0, 1, 2


class ToyStt(torch.nn.Module):
    """What `forward_stt` reads of an LMModel (`forward_text`, `extra_heads`) with hand-set outputs:
    frame t's hidden state is the one-hot of the code its first audio codebook reads, so column c
    of each Linear is the logits of every frame reading code c."""

    def __init__(self):
        super().__init__()
        self.text_linear = torch.nn.Linear(CODES, 6, bias=False)
        self.extra_heads = torch.nn.ModuleList(torch.nn.Linear(CODES, 6, bias=False) for _ in range(HEADS))
        with torch.no_grad():
            self.text_linear.weight.copy_(torch.stack([logits_of(p) for p in TEXT_PROBS], dim=1))
            for head in self.extra_heads:
                head.weight.zero_()
                head.weight[0] = torch.tensor(BASE_PAUSE_LOGIT)

    def forward_text(self, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = torch.nn.functional.one_hot(inputs[:, 1], CODES).float()  # [B, T, CODES]
        return hidden, self.text_linear(hidden)[:, None]  # text logits [B, 1, T, V], as moshi's


# Four frames: codes 0, 1, 2, 2. Frame 3 is a padding frame: IGNORE text, head mask 0.
#   frame  code  text   P(text)  pause y  head  number  base P(pause)
#   0      0     1      1/2      0        1     0       1/2
#   1      1     PAD    1/2      1        1     1       3/4
#   2      2     EPAD   1/4      0        1     0       1/6
#   3      2     IGNORE -        1        0     0       1/6
FRAME_CODES = [0, 1, 2, 2]
W_PAD, W_HEAD, SCALING = 0.25, 2.0, 2.0
TEXT_LOSS = 7 / 6 * LN2  # (ln2 + 0.25 ln2 + 0.25 * 2 ln2) / (1 + 0.25 + 0.25)


def toy_batch() -> tr.Batch:
    inputs = torch.tensor([[[1000] * 4, FRAME_CODES]])  # [1, 1 + n_q, 4]; the text row is not read
    y = torch.tensor([0.0, 1.0, 0.0, 1.0])
    return tr.Batch(inputs=inputs, text=torch.tensor([[1, PAD, EPAD, IGNORE]]),
                    pause=y[None, :, None].repeat(1, 1, HEADS), head_mask=torch.tensor([[1.0, 1.0, 1.0, 0.0]]),
                    number_mask=torch.tensor([[0.0, 1.0, 0.0, 0.0]]), real_frames=3)


def toy_trainer(head_loss: str, lora_delta: float = 0.0) -> tr.Trainer:
    """The toy model under `make_trainer` (LoRA of rank 2 on its Linears, AdamW, no clipping), each
    head's LoRA A set to ones and B to `lora_delta / (2 * SCALING)` on class 0: the LoRA adds
    SCALING * B @ A @ onehot = lora_delta to the class-0 logit of every frame; the text LoRA stays 0."""
    tc = load_config(None, ["train.device=cpu", "train.lora_rank=2", f"train.lora_scaling={SCALING}",
                            f"train.text_padding_weight={W_PAD}", f"train.head_loss={head_loss}",
                            f"train.head_loss_weight={W_HEAD}", "train.grad_clip=0", "train.lr=0.01"]).train
    trainer = tr.make_trainer(ToyStt(), tc, "cpu")
    with torch.no_grad():
        for head in trainer.lm.extra_heads:
            head.lora_A.weight.fill_(1.0)
            head.lora_B.weight.zero_()
            head.lora_B.weight[0] = lora_delta / (2 * SCALING)
    return trainer


def head_lora_b_grads(trainer: tr.Trainer) -> list[torch.Tensor | None]:
    return [head.lora_B.weight.grad for head in trainer.lm.extra_heads]


def test_supervised_step_adds_the_weighted_head_loss_on_the_alignment_targets():
    trainer = toy_trainer("supervised")
    out = tr.train_step(trainer, toy_batch(), lr=0.01)
    # Head loss over frames 0-2 (frame 3 masked), both heads alike:
    #   frame 0: y=0, P=1/2 -> ln 2;  frame 1: y=1, P=3/4 -> ln(4/3);  frame 2: y=0, P=1/6 -> ln(6/5)
    #   mean = ln(2 * 4/3 * 6/5) / 3 = ln(16/5) / 3
    head = math.log(16 / 5) / 3
    assert out["text_loss"].item() == pytest.approx(TEXT_LOSS, rel=1e-6)
    assert out["head_loss"].item() == pytest.approx(head, rel=1e-6)
    assert out["loss"].item() == pytest.approx(TEXT_LOSS + W_HEAD * head, rel=1e-6)
    # d loss / d B[0, j] = W_HEAD * SCALING * sum_t (P_t - y_t) / 6 (A = ones: each rank row reads 1)
    #   = 2 * 2 * ((1/2 - 0) + (3/4 - 1) + (1/6 - 0)) / 6 = 4 * (5/12) / 6 = 5/18
    for grad in head_lora_b_grads(trainer):
        assert grad[0].tolist() == pytest.approx([5 / 18] * 2, rel=1e-5)


def test_distill_step_matches_the_frozen_bases_pause_probabilities_away_from_numbers():
    # The LoRA adds ln 3 to class 0: the student's P(pause) on codes 0, 1, 2 is 15/20 = 3/4,
    # 45/50 = 9/10, 3/8; the frozen base's (the targets) 1/2, 3/4, 1/6.
    trainer = toy_trainer("distill", lora_delta=DELTA)
    out = tr.train_step(trainer, toy_batch(), lr=0.01)
    # Kept: head mask and not a number -> frames 0 and 2 (frame 1 is a number, frame 3 padding).
    #   frame 0: -(1/2 ln(3/4) + 1/2 ln(1/4)) = ln(16/3) / 2
    #   frame 2: -(1/6 ln(3/8) + 5/6 ln(5/8)) = ln(8/3) / 6 + 5 ln(8/5) / 6
    head = (math.log(16 / 3) / 2 + math.log(8 / 3) / 6 + 5 * math.log(8 / 5) / 6) / 2
    # (The student as its own teacher would give the mean entropy, 0.612; with the number frame, 0.682.)
    assert out["head_loss"].item() == pytest.approx(head, rel=1e-6)  # 0.6961
    assert out["text_loss"].item() == pytest.approx(TEXT_LOSS, rel=1e-6)  # the text LoRA is still 0
    assert out["loss"].item() == pytest.approx(TEXT_LOSS + W_HEAD * head, rel=1e-6)
    # d/dB[0, j] = W_HEAD * SCALING * sum over kept frames of (q_t - p_t) / 4 cells
    #   = 4 * ((3/4 - 1/2) + (3/8 - 1/6)) / 4 = 1/4 + 5/24 = 11/24
    for grad in head_lora_b_grads(trainer):
        assert grad[0].tolist() == pytest.approx([11 / 24] * 2, rel=1e-5)
    # The base is only borrowed: the LoRA is back on after the step.
    assert all(head.scaling == SCALING for head in trainer.lm.extra_heads)


def test_distill_from_an_untouched_lora_has_nothing_to_learn_on_the_heads():
    # LoRA B = 0 (a fresh run): student = base, so every head gradient is exactly P - P = 0 and the
    # loss is the base's mean entropy on frames 0 and 2: (ln 2 + H(1/6)) / 2.
    trainer = toy_trainer("distill")
    out = tr.train_step(trainer, toy_batch(), lr=0.01)
    h_sixth = -(1 / 6 * math.log(1 / 6) + 5 / 6 * math.log(5 / 6))
    assert out["head_loss"].item() == pytest.approx((LN2 + h_sixth) / 2, rel=1e-6)
    for grad in head_lora_b_grads(trainer):
        assert grad.abs().max().item() < 1e-7


def test_none_step_trains_the_text_alone():
    trainer = toy_trainer("none")
    out = tr.train_step(trainer, toy_batch(), lr=0.01)
    assert out["head_loss"].item() == 0.0
    assert out["loss"].item() == pytest.approx(TEXT_LOSS, rel=1e-6)
    assert all(grad is None or not grad.any() for grad in head_lora_b_grads(trainer))
    assert trainer.lm.text_linear.lora_B.weight.grad.abs().sum() > 0  # the text head did train
