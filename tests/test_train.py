"""Training on the tiny checkpoint (CPU): loss falls, adapters load in moshi, resume is exact."""

import gzip
import json
import random

import pytest
import torch
from safetensors.torch import load_file

from pipeline import train as tr
from pipeline.checkpoint import Checkpoint
from pipeline.config import load_config
from pipeline.labels import Word
from pipeline.presets import synthetic_audio

WORDS = ["order", "number", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "zero", "please"]


@pytest.fixture(scope="module")
def samples(tiny_ckpt):
    """Twelve synthetic utterances: Mimi codes of speech-like audio plus word timings."""
    mimi = Checkpoint.open(tiny_ckpt).load_mimi()
    rng = random.Random(0)
    out = []
    for i in range(12):
        seconds = rng.choice([4.8, 6.4, 8.0])
        audio = torch.from_numpy(synthetic_audio(seconds, seed=100 + i))[None, None]
        with torch.no_grad():
            codes = mimi.encode(audio)[0].long()
        t, words = rng.uniform(0.2, 0.8), []
        while t < seconds - 1.5:
            d = rng.uniform(0.2, 0.4)
            words.append(Word(rng.choice(WORDS), t, t + d))
            t += d + rng.uniform(0.05, 0.3)
        out.append(tr.Sample(codes, words, numbers=[(words[1].start, words[2].end)]))
    return out


def config(tmp_path, **train):
    base = {"train.steps": 30, "train.batch_size": 4, "train.window_seconds": 12.8, "train.lr": 3e-3,
            "train.warmup_steps": 3, "train.lora_rank": 8, "train.save_every": 10, "train.device": "cpu",
            "artifacts": str(tmp_path)}
    base.update({f"train.{k}": v for k, v in train.items()})
    return load_config(None, [f"{k}={v}" for k, v in base.items()])


def metrics(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_packing_keeps_every_frame_with_little_padding():
    lengths = [300, 200, 100, 800, 60, 375, 7]
    windows = tr.pack_windows(lengths, 375, order=range(len(lengths)))
    assert sum(n for w in windows for _, _, n in w) == sum(lengths)
    fills = [sum(n for _, _, n in w) for w in windows]
    assert all(f <= 375 for f in fills) and all(375 - f < tr.MIN_PIECE for f in fills[:-1])
    for w in windows:  # a continued utterance always starts its window
        assert all(first == 0 for _, first, _ in w[1:])
    pieces = [(first, n) for w in windows for idx, first, n in w if idx == 3]
    assert [p[0] for p in pieces] == sorted(p[0] for p in pieces) and sum(n for _, n in pieces) == 800


def test_epoch_batches_are_deterministic_and_sharded(samples):
    a = tr.epoch_batches(samples, 160, 2, seed=5, epoch=1)
    assert a == tr.epoch_batches(samples, 160, 2, seed=5, epoch=1)
    assert a != tr.epoch_batches(samples, 160, 2, seed=5, epoch=2)
    r0 = tr.epoch_batches(samples, 160, 1, seed=5, epoch=1, rank=0, world=2)
    r1 = tr.epoch_batches(samples, 160, 1, seed=5, epoch=1, rank=1, world=2)
    flat = lambda bs: [w for b in bs for w in b]  # noqa: E731
    assert sorted(map(str, flat(r0) + flat(r1))) == sorted(map(str, flat(a)))


def test_batches_keep_one_shape_and_drop_no_window(samples):
    """Every batch holds exactly batch_size windows (one compiled shape), and the windows of an
    epoch that do not fill its last batch open the next epoch's first: the stream is the epochs'
    windows in order, none left out."""
    epoch = lambda e: [w for b in tr.epoch_batches(samples, 160, 4, seed=5, epoch=e) for w in b]  # noqa: E731
    per_epoch = len(epoch(0))
    assert per_epoch % 4 and per_epoch > 4  # else this test shows nothing
    stream = tr.batch_stream(samples, 160, 4, seed=5)
    batches = [next(stream) for _ in range(2 * per_epoch)]  # several epochs' worth
    assert all(len(b) == 4 for b in batches)
    flat = [w for b in batches for w in b]
    assert flat == [w for e in range(10) for w in epoch(e)][:len(flat)]
    resumed = tr.batch_stream(samples, 160, 4, seed=5, skip=5)
    assert [next(resumed) for _ in range(4)] == batches[5:9]


def test_a_dataset_smaller_than_a_batch_gives_one_batch_per_epoch(samples):
    stream = tr.batch_stream(samples[:2], 640, 8, seed=1)
    first, second = next(stream), next(stream)
    assert first == [w for b in tr.epoch_batches(samples[:2], 640, 8, seed=1, epoch=0) for w in b]
    assert second == [w for b in tr.epoch_batches(samples[:2], 640, 8, seed=1, epoch=1) for w in b]


def test_prefetched_batches_come_in_order_and_errors_surface():
    def made(n, fail_at=None):
        for i in range(n):
            if i == fail_at:
                raise tr.TrainingError(f"bad batch {i}")
            yield tr.Batch(torch.full((1, 2, 3), i), torch.zeros(1, 3), torch.zeros(1, 3, 4), torch.ones(1, 3),
                           torch.zeros(1, 3), 3)

    assert [int(b.inputs[0, 0, 0]) for b in tr.prefetched(made(6), pin=False)] == list(range(6))
    got = []
    with pytest.raises(tr.TrainingError, match="bad batch 3"):
        for b in tr.prefetched(made(6, fail_at=3), pin=False):
            got.append(int(b.inputs[0, 0, 0]))
    assert got == [0, 1, 2]
    early = tr.prefetched(made(1000), pin=False)
    next(early)
    early.close()  # a loop that stops early stops the thread too
    import threading
    assert not any(t.name == "batch-prefetch" and t.is_alive() for t in threading.enumerate())


def test_batch_targets_line_up_with_the_audio(samples, tiny_ckpt):
    tok = Checkpoint.open(tiny_ckpt).tokenizer
    n0, n1 = samples[0].frames, samples[1].frames
    batch = tr.make_batch([[(0, 0, n0), (1, 0, n1)]], samples, n0 + n1 + 20, tok.encode, 1000, 64, delay=0.5)
    assert torch.equal(batch.inputs[0, 1:, 1:n0 + 1], samples[0].codes)  # shifted by one frame
    assert torch.equal(batch.inputs[0, 1:, n0 + 1:n0 + n1 + 1], samples[1].codes)
    assert (batch.text[0, n0 + n1:] == -1).all()
    assert (batch.text[0, :3] == 3).all()  # a window opening on an utterance's start: padding, as live
    cut = tr.make_batch([[(0, 5, n0 - 5)]], samples, n0, tok.encode, 1000, 64, delay=0.5)
    kept = cut.text[0, :n0 - 5] != -1  # opening mid-utterance: the whole utterance's targets, sliced
    assert torch.equal(cut.text[0, :n0 - 5][kept], batch.text[0, 5:n0][kept]) and kept[-10:].all()
    assert torch.equal(cut.pause[0, :n0 - 5], batch.pause[0, 5:n0])
    assert batch.head_mask[0].sum() == n0 + n1 and batch.real_frames == n0 + n1
    assert batch.number_mask[0].sum() > 0
    written = [t for t in batch.text[0].tolist() if t > 3]
    expected = [t for w in samples[0].words + samples[1].words for t in tok.encode(w.text)]
    assert written == expected


def test_codebook_dropout_keeps_text_start_and_first_codebook_and_drops_a_suffix(samples, tiny_ckpt):
    tok = Checkpoint.open(tiny_ckpt).tokenizer
    n0 = samples[0].frames
    one = tr.make_batch([[(0, 0, n0)]], samples, n0, tok.encode, 1000, 64, delay=0.5).inputs
    inputs = one.repeat(2000, 1, 1)
    n_q = inputs.shape[1] - 1
    generator = torch.Generator().manual_seed(0)
    assert torch.equal(tr.drop_codebooks(inputs, 0.0, generator), inputs)
    for share in (1.0, 0.5):
        out = tr.drop_codebooks(inputs, share, generator)
        assert torch.equal(out[:, :2], inputs[:, :2]) and torch.equal(out[:, :, 0], inputs[:, :, 0])
        dropped = (out[:, 1:, 1:] == tr.IGNORE).all(-1)                      # [windows, n_q]
        untouched = (out[:, 1:, 1:] == inputs[:, 1:, 1:]).all(-1)
        assert (dropped ^ untouched).all()                                   # a codebook is kept or dropped whole
        kept = untouched.sum(1)
        assert torch.equal(untouched, torch.arange(n_q)[None] < kept[:, None])  # the dropped ones are a suffix
        whole = (kept == n_q).float().mean().item()
        counts = torch.bincount(kept, minlength=n_q + 1)[1:].float() / len(kept)
        if share == 1.0:  # k uniform in 1..n_q
            assert (abs(counts - 1 / n_q) < 0.4 / n_q).all(), counts
        else:             # half the windows untouched, plus the uniform draw that keeps them all
            assert abs(whole - (0.5 + 0.5 / n_q)) < 0.05, whole


def test_moshi_embeds_a_dropped_codebook_as_zero(tiny_ckpt, tmp_path, samples, monkeypatch):
    lm = Checkpoint.open(tiny_ckpt).load_lm(dtype=torch.float32)
    with torch.no_grad():
        assert all(float(emb(torch.full((1, 3), tr.IGNORE)).abs().max()) == 0 for emb in lm.emb)
    calls, real = [], tr.drop_codebooks
    monkeypatch.setattr(tr, "drop_codebooks", lambda inputs, share, gen: calls.append(share) or real(inputs, share, gen))
    rows = metrics(tr.train(config(tmp_path, steps=4, codebook_dropout=0.5), tiny_ckpt, samples=samples))
    assert calls == [0.5] * 4 and all(r["loss"] == r["loss"] for r in rows)
    tr.train(config(tmp_path / "off", steps=2), tiny_ckpt, samples=samples)
    assert len(calls) == 4  # off by default


def test_loss_falls_and_metrics_are_written(tmp_path, tiny_ckpt, samples):
    cfg = config(tmp_path)
    run = tr.train(cfg, tiny_ckpt, samples=samples)
    rows = metrics(run)
    assert [r["step"] for r in rows] == list(range(1, 31))
    first, last = sum(r["loss"] for r in rows[:5]) / 5, sum(r["loss"] for r in rows[-5:]) / 5
    assert last < 0.6 * first, (first, last)
    assert rows[-1]["head_loss"] < rows[0]["head_loss"]
    assert all(0 <= r["padding_pct"] < 100 and r["frames_per_s"] > 0 and r["step_s"] > 0 for r in rows)
    assert (run / "final" / "lora.safetensors").is_file() and (run / "config.yaml").is_file()
    assert not (run / "profile.txt").exists()  # the profiler runs only when asked (it keeps every event)


@pytest.mark.parametrize("head_loss", ["distill", "none"])
def test_the_other_head_losses_run_through_train(tmp_path, tiny_ckpt, samples, head_loss):
    """train.head_loss=distill and none through the whole loop (their arithmetic: test_losses.py).
    distill's first step has LoRA B = 0, so the student is the base: its head loss is then the
    binary entropy of the base's own P(pause), at most ln 2 (alignment targets could cost more)."""
    import math

    rows = metrics(tr.train(config(tmp_path, steps=3, head_loss=head_loss), tiny_ckpt, samples=samples))
    assert [r["step"] for r in rows] == [1, 2, 3]
    weight = load_config(None).train.head_loss_weight
    for r in rows:
        assert r["loss"] == pytest.approx(r["text_loss"] + weight * r["head_loss"], rel=1e-5)
    if head_loss == "none":
        assert all(r["head_loss"] == 0.0 for r in rows)
    else:
        assert 0 < rows[0]["head_loss"] <= math.log(2) + 1e-6


def test_profile_writes_the_op_table_of_three_steps(tmp_path, tiny_ckpt, samples):
    run = tr.train(config(tmp_path, steps=6, profile="true"), tiny_ckpt, samples=samples)
    text = (run / "profile.txt").read_text()
    assert text.startswith("train.profile: steps 4-6 of the loop") and "by host time" in text
    assert "aten::mm" in text or "aten::addmm" in text  # the ops the steps ran
    assert "device timeline: " in text  # on the CPU: no device events
    assert [r["step"] for r in metrics(run)] == list(range(1, 7))
    trace = json.loads(gzip.decompress((run / "trace.json.gz").read_bytes()))
    names = {e.get("name") for e in (trace["traceEvents"] if isinstance(trace, dict) else trace)}
    assert "aten::mm" in names or "aten::addmm" in names
    assert not (run / "trace.json").exists()


def test_device_timeline_counts_overlapping_work_once_and_finds_the_gaps():
    kernel = lambda ts, dur: {"ph": "X", "cat": "kernel", "ts": ts, "dur": dur}  # noqa: E731
    host = {"ph": "X", "cat": "cpu_op", "name": "aten::mm", "ts": 0, "dur": 1000}
    events = [host, kernel(100, 200), kernel(250, 100), kernel(600, 100), {"ph": "i", "ts": 5000},
              {"ph": "X", "cat": "gpu_memcpy", "ts": 900, "dur": 100}]
    timeline = tr.device_timeline(events)
    # busy: [100, 350] + [600, 700] + [900, 1000] = 450 us of the 1000 us span (host op 0..1000)
    assert timeline == {"device_events": 4, "span_ms": 1.0, "device_busy_ms": 0.45, "device_busy_share": 0.45,
                        "longest_idle_gaps_ms": [0.25, 0.2]}
    assert tr.device_timeline([host]) == {"device_events": 0}
    # work that ends last is the span's end; a kernel inside another adds nothing
    inner = tr.device_timeline([kernel(0, 1000), kernel(10, 10), kernel(1000, 0)])
    assert inner["device_busy_share"] == 1.0 and inner["longest_idle_gaps_ms"] == []


def _write_pack(path, samples, mimi_file):
    from types import SimpleNamespace

    from pipeline.codes import write_pack

    utterances = [SimpleNamespace(path=f"eval/{i:05d}.wav", alignments=[(w.text, (w.start, w.end), "SPEAKER_MAIN")
                                                                       for w in s.words],
                                  number_spans=[], category="plain", voice="") for i, s in enumerate(samples)]
    return write_pack(path, utterances, [s.codes for s in samples], [s.codes[:, 0] for s in samples], mimi_file,
                      text_delay=0.5)


def test_held_out_scores_are_logged_and_leave_training_untouched(tmp_path, tiny_ckpt, samples):
    """train.val_data: val_* fields every val_every steps and at the end; the training itself
    (every loss of every step) is bit for bit the run without it."""
    held_out = _write_pack(tmp_path / "eval.pack.safetensors", samples[8:], Checkpoint.open(tiny_ckpt).files["mimi"])
    plain = metrics(tr.train(config(tmp_path / "a", steps=25), tiny_ckpt, samples=samples[:8]))
    scored = metrics(tr.train(config(tmp_path / "b", steps=25, val_data=held_out, val_every=10), tiny_ckpt,
                              samples=samples[:8]))
    assert [r["loss"] for r in scored] == [r["loss"] for r in plain]
    assert [r["step"] for r in scored if "val_text_loss" in r] == [10, 20, 25]
    vals = [r for r in scored if "val_text_loss" in r]
    assert all(r["val_text_loss"] > 0 and r["val_head_loss"] > 0 and 0 <= r["val_word_token_accuracy"] <= 1
               for r in vals)
    assert vals[-1]["val_text_loss"] < vals[0]["val_text_loss"]  # same words, other audio: it generalizes a bit
    with pytest.raises(tr.TrainingError, match="no eval utterances"):
        (tmp_path / "empty").mkdir()
        (tmp_path / "empty" / "eval.jsonl").write_text("")
        tr.train(config(tmp_path / "c", val_data=tmp_path / "empty"), tiny_ckpt, samples=samples[:8])


def test_saved_adapter_reproduces_the_trained_model_through_moshi(tmp_path, tiny_ckpt, samples):
    from moshi.models.loaders import get_moshi_lm

    cfg = config(tmp_path, steps=8)
    tok = Checkpoint.open(tiny_ckpt).tokenizer
    run = tr.train(cfg, tiny_ckpt, samples=samples)
    adapter = load_file(str(run / "final" / "lora.safetensors"))
    assert adapter and all(".lora_A." in k or ".lora_B." in k for k in adapter)
    assert any(v.abs().sum() > 0 for k, v in adapter.items() if ".lora_B." in k)  # it trained

    lora_cfg = json.loads((run / "final" / "config.json").read_text())
    lm_kwargs = {k: v for k, v in lora_cfg.items() if k not in tr_non_lm_keys()}
    moshi_lm = get_moshi_lm(str(tiny_ckpt / "model.safetensors"), lm_kwargs=lm_kwargs, dtype=torch.float32,
                            lora_weights=str(run / "final" / "lora.safetensors"))
    ours = Checkpoint.open(tiny_ckpt).load_lm()
    tr.apply_lora(ours, cfg.train.lora_rank, cfg.train.lora_scaling)
    ours.load_state_dict(adapter, strict=False)
    batch = tr.make_batch([[(0, 0, samples[0].frames)]], samples, samples[0].frames, tok.encode, 1000, 64, 0.5)
    with torch.no_grad():
        a_text, a_heads = tr.forward_stt(moshi_lm, batch.inputs)
        b_text, b_heads = tr.forward_stt(ours, batch.inputs)
        base_text, _ = tr.forward_stt(Checkpoint.open(tiny_ckpt).load_lm(), batch.inputs)
    assert torch.allclose(a_text, b_text, atol=1e-5) and torch.allclose(a_heads, b_heads, atol=1e-5)
    assert not torch.allclose(a_text, base_text, atol=1e-3)


def test_teacher_forced_frame_t_is_the_streaming_step_t_that_read_the_same_text(tiny_ckpt, samples):
    """Training and the runtime meet: `make_batch`'s inputs through `forward_stt` give at frame t
    what moshi streaming gives at step t after reading back the same text (the window's labels)
    and the same audio codes (`torch_stream`, the Rust runtime's input convention, which
    tests/test_eval_report.py ties to Kyutai's crate under forced text). So the one-frame input
    shift and the text delay of the labels are the runtime's, end to end."""
    import numpy as np

    from pipeline.eval import Reference
    from pipeline.evaluate.stream import reference_text
    from pipeline.verify import torch_stream

    ckpt = Checkpoint.open(tiny_ckpt)
    lm = ckpt.load_lm(dtype=torch.float32)
    sample = samples[0]
    n = sample.frames
    batch = tr.make_batch([[(0, 0, n)]], samples, n, ckpt.tokenizer.encode, lm.text_card, lm.card, ckpt.text_delay)
    forced = batch.text[0]
    assert (forced != tr.IGNORE).all() and (forced > 3).sum() >= len(sample.words)  # every frame known, words in it
    # The eval's forced text (eval.text=reference) is the same stream: same labels, same delay.
    ref = Reference("s0", [w.text for w in sample.words], [(w.start, w.end) for w in sample.words])
    assert reference_text(ref, ckpt, "words", n).tolist() == forced.tolist()
    with torch.no_grad():
        text_logits, head_logits = tr.forward_stt(lm, batch.inputs)
    streamed = torch_stream(ckpt, sample.codes.T.numpy(), forced_text=forced.numpy())
    taught = text_logits[0].numpy()
    assert streamed.logits.shape == taught.shape == (n, lm.text_card)
    assert np.abs(streamed.logits - taught).max() < 1e-4
    assert np.abs(streamed.pause - tr.pause_log_probs(head_logits)[0].exp()[0].numpy()).max() < 1e-5
    # Off by one frame, they disagree: the comparison can see a shift.
    assert np.abs(streamed.logits[1:] - taught[:-1]).max() > 1e-2


def tr_non_lm_keys():
    from pipeline.checkpoint import NON_LM_KEYS

    return NON_LM_KEYS


@pytest.mark.parametrize("codebook_dropout", [0.0, 0.5])
def test_interrupted_then_resumed_run_equals_uninterrupted(tmp_path, tiny_ckpt, samples, monkeypatch, codebook_dropout):
    straight = tr.train(config(tmp_path / "a", steps=12, save_every=4, codebook_dropout=codebook_dropout), tiny_ckpt,
                        samples=samples)

    real, calls = tr.make_batch, {"n": 0}

    def dies_at_step_7(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 7:
            raise KeyboardInterrupt("killed (simulated)")
        return real(*args, **kwargs)

    cfg = config(tmp_path / "b", steps=12, save_every=4, codebook_dropout=codebook_dropout)
    monkeypatch.setattr(tr, "make_batch", dies_at_step_7)
    with pytest.raises(KeyboardInterrupt):
        tr.train(cfg, tiny_ckpt, samples=samples)
    monkeypatch.setattr(tr, "make_batch", real)
    with pytest.raises(tr.TrainingError, match="--resume"):
        tr.train(cfg, tiny_ckpt, samples=samples)
    resumed = tr.train(cfg, tiny_ckpt, resume=True, samples=samples)

    a = load_file(str(straight / "final" / "lora.safetensors"))
    b = load_file(str(resumed / "final" / "lora.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert [r["step"] for r in metrics(resumed)][-8:] == list(range(5, 13))


def test_resume_with_a_changed_config_is_refused_naming_each_field(tmp_path, tiny_ckpt, samples):
    tr.train(config(tmp_path, steps=2, save_every=1), tiny_ckpt, samples=samples)
    changed = config(tmp_path, steps=2, save_every=1, lr=1e-3, lora_rank=4)
    with pytest.raises(tr.TrainingError) as err:
        tr.train(changed, tiny_ckpt, resume=True, samples=samples)
    assert str(err.value) == (f"{tmp_path / 'runs' / 'train' / 'config.yaml'}: --resume with a changed config "
                              "(train.lora_rank: 8 -> 4; train.lr: 0.003 -> 0.001); resume with the saved config, "
                              "or start a new run in another train.out")
    # What only decides what is written may change: the finished run resumes (nothing left to do).
    tr.train(config(tmp_path, steps=2, save_every=2, log_every=2), tiny_ckpt, resume=True, samples=samples)


def test_a_dataset_built_for_another_text_delay_is_refused(tmp_path, tiny_ckpt):
    from types import SimpleNamespace

    from pipeline.codes import write_pack

    ckpt = Checkpoint.open(tiny_ckpt)
    utterance = SimpleNamespace(path=tmp_path / "a.wav", alignments=[["one", [0.5, 0.8], "SPEAKER_MAIN"]],
                                number_spans=[], category="plain", voice="espeak:en")
    zeros = torch.zeros(8, 30, dtype=torch.long)
    pack = write_pack(tmp_path / "p.safetensors", [utterance], [zeros], [zeros[:, 0]], ckpt.files["mimi"], text_delay=1.0)
    cfg = load_config(None, [f"train.data={pack}", f"artifacts={tmp_path}"])
    with pytest.raises(tr.TrainingError, match=r"p.safetensors was built for a text delay of 1 s, but .* writes its "
                                               r"text 0.5 s late; rebuild the dataset with --set data.text_delay=0.5"):
        tr.load_samples(cfg, ckpt, "cpu")
    write_pack(pack, [utterance], [zeros], [zeros[:, 0]], ckpt.files["mimi"], text_delay=0.5)
    assert len(tr.load_samples(cfg, ckpt, "cpu")) == 1


def test_augmented_copies_are_trained_on_unless_turned_off(tmp_path, tiny_ckpt):
    """train.augmented=false keeps exactly the pack's clips as recorded, in their order."""
    from types import SimpleNamespace

    from pipeline.codes import write_pack

    ckpt = Checkpoint.open(tiny_ckpt)
    utterances = [SimpleNamespace(path=tmp_path / f"{i}.wav", alignments=[["one", [0.5, 0.8], "SPEAKER_MAIN"]],
                                  number_spans=[], category="plain", voice="espeak:en") for i in range(4)]
    codes = [torch.full((8, 30), i, dtype=torch.long) for i in range(4)]  # clips 0, 1 and their copies 2, 3
    pack = write_pack(tmp_path / "p.safetensors", utterances, codes, [c[:, 0] for c in codes], ckpt.files["mimi"],
                      text_delay=0.5, augments=["", "", "speed 1.05", "noise 20 dB"])
    every = tr.load_samples(load_config(None, [f"train.data={pack}", f"artifacts={tmp_path}"]), ckpt, "cpu")
    recorded = tr.load_samples(load_config(None, [f"train.data={pack}", f"artifacts={tmp_path}",
                                                  "train.augmented=false"]), ckpt, "cpu")
    assert [int(s.codes[0, 0]) for s in every] == [0, 1, 2, 3]
    assert [int(s.codes[0, 0]) for s in recorded] == [0, 1]


def test_served_starts_give_a_share_of_utterances_the_servers_first_frame(tmp_path, tiny_ckpt):
    """train.served_starts: frame 0 of round(share * N) training utterances, the same ones for one
    seed, becomes the pack's served first frame; no other frame changes, and held-out data never."""
    from types import SimpleNamespace

    from pipeline.codes import write_pack

    ckpt = Checkpoint.open(tiny_ckpt)
    utterances = [SimpleNamespace(path=tmp_path / f"{i}.wav", alignments=[["one", [0.5, 0.8], "SPEAKER_MAIN"]],
                                  number_spans=[], category="plain", voice="espeak:en") for i in range(10)]
    codes = [torch.full((8, 30), i, dtype=torch.long) for i in range(10)]
    served = [torch.full((8,), 50 + i, dtype=torch.long) for i in range(10)]
    pack = write_pack(tmp_path / "p.safetensors", utterances, codes, served, ckpt.files["mimi"], text_delay=0.5)

    def load(*overrides, split="train"):
        cfg = load_config(None, [f"train.data={pack}", f"artifacts={tmp_path}", *overrides])
        return tr.load_samples(cfg, ckpt, "cpu", split=split)

    def started_as_served(samples):
        return [i for i, s in enumerate(samples) if int(s.codes[0, 0]) == 50 + i]

    chosen = started_as_served(load("train.served_starts=0.3", "train.seed=1"))
    assert len(chosen) == 3 and chosen == started_as_served(load("train.served_starts=0.3", "train.seed=1"))
    assert chosen != started_as_served(load("train.served_starts=0.3", "train.seed=2"))  # another draw
    every = load("train.served_starts=1")
    assert started_as_served(every) == list(range(10))
    assert all(torch.equal(s.codes[:, 0], served[i]) and torch.equal(s.codes[:, 1:], codes[i][:, 1:])
               for i, s in enumerate(every))
    assert started_as_served(load()) == [] and started_as_served(load("train.served_starts=1", split="eval")) == []
    assert all(torch.equal(c, torch.full((8, 30), i)) for i, c in enumerate(codes))  # the pack's tensors untouched


def test_checkpoint_without_heads_is_refused(tmp_path, tiny_copy, samples):
    config_path = tiny_copy / "config.json"
    raw = json.loads(config_path.read_text())
    raw["extra_heads_num_heads"] = 0
    config_path.write_text(json.dumps(raw))
    with pytest.raises(tr.TrainingError, match="no extra heads"):
        tr.train(config(tmp_path), tiny_copy, samples=samples)


def test_nan_loss_stops_and_names_the_last_good_checkpoint(tmp_path, tiny_ckpt, samples, monkeypatch):
    real, calls = tr.text_loss, {"n": 0}

    def nan_at_step_5(*args):
        calls["n"] += 1
        loss = real(*args)
        return loss * float("nan") if calls["n"] == 5 else loss

    monkeypatch.setattr(tr, "text_loss", nan_at_step_5)
    with pytest.raises(tr.TrainingError, match=r"loss is nan at step 5.*step_000004"):
        tr.train(config(tmp_path, save_every=2), tiny_ckpt, samples=samples)


def test_full_training_writes_a_checkpoint_moshi_loads_strictly(tmp_path, tiny_ckpt, samples):
    from pipeline.checkpoint import Checkpoint

    cfg = config(tmp_path, method="full", steps=6, lr=1e-3, save_every=3)
    run = tr.train(cfg, tiny_ckpt, samples=samples)
    final = run / "final"
    trained = Checkpoint.open(final).load_lm()  # strict load through moshi's loaders
    base = Checkpoint.open(tiny_ckpt).load_lm()
    changed = [k for k, v in trained.state_dict().items() if not torch.equal(v, base.state_dict()[k])]
    assert len(changed) > 0.9 * len(base.state_dict())  # every weight trains, not just adapters
    assert "in_proj_weight" in " ".join(load_file(str(Checkpoint.open(final).files["lm"])))  # Kyutai's names
    assert "lora" not in json.loads((final / "config.json").read_text())


def test_full_training_resumes_from_its_weights(tmp_path, tiny_ckpt, samples):
    straight = tr.train(config(tmp_path / "a", method="full", steps=6, save_every=3), tiny_ckpt,
                        samples=samples)
    cfg = config(tmp_path / "b", method="full", steps=3, save_every=3)
    tr.train(cfg, tiny_ckpt, samples=samples)
    cfg = config(tmp_path / "b", method="full", steps=6, save_every=3)
    resumed = tr.train(cfg, tiny_ckpt, resume=True, samples=samples)
    a = load_file(str(straight / "final" / "model.safetensors"))
    b = load_file(str(resumed / "final" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("context", [None, 16])
def test_window_attention_equals_moshis_attention(tiny_ckpt, context):
    """The is_causal fast path gives moshi's outputs and gradients; a window longer than the
    attention context (16 frames here) keeps moshi's windowed mask."""
    torch.manual_seed(0)
    reference, fast = Checkpoint.open(tiny_ckpt).load_lm(dtype=torch.float32), Checkpoint.open(tiny_ckpt).load_lm(dtype=torch.float32)
    attention = [m for m in reference.modules() if type(m).__name__ == "StreamingMultiheadAttention"]
    if context is not None:
        for lm in (reference, fast):
            for m in lm.modules():
                if type(m).__name__ == "StreamingMultiheadAttention":
                    m.context = context
    assert tr.use_window_attention(fast) == len(attention) > 0
    codes = torch.randint(0, reference.card, (2, reference.n_q + 1, 40))
    codes[:, 0] = torch.randint(0, reference.text_card, (2, 40))
    inputs = tr.shift_inputs(codes, reference.text_card, reference.card)
    outputs = []
    for lm in (reference, fast):
        text, heads = tr.forward_stt(lm, inputs)
        (text.logsumexp(-1).sum() + heads.sum()).backward()
        outputs.append((text, heads, lm.transformer.layers[0].self_attn.in_projs[0].weight.grad))
    for ref, got in zip(*outputs):
        assert torch.allclose(ref, got, rtol=1e-5, atol=1e-5), (ref - got).abs().max()
    if context is None:  # the bug this guards against: a path that ignores causality
        future = inputs.clone()
        future[:, :, -1] = 0
        assert torch.allclose(tr.forward_stt(fast, future)[0][:, :-1], outputs[1][0][:, :-1], atol=1e-5)


def test_compile_mode_auto_is_cuda_graphs_in_one_process_and_the_default_mode_under_ddp():
    assert tr.compile_mode("auto", world=1) == "reduce-overhead"
    assert tr.compile_mode("auto", world=2) == "default"
    assert tr.compile_mode("default", world=1) == "default"
    assert tr.compile_mode("max-autotune", world=4) == "max-autotune"
    assert load_config(None).train.compile_mode == "auto"
    with pytest.raises(Exception, match="train.compile_mode must be"):
        load_config(None, ["train.compile_mode=graphs"])


def test_the_lora_trains_in_float32_on_a_bfloat16_base(tiny_ckpt):
    """As on a GPU: the frozen base in bf16, the LoRA's weights (so AdamW's moments too) in float32.
    A bf16 lora_A would drop most of its updates at invoke train's learning rates: measured in
    docs/benchmarks.md, and shown here on the same weights stored in bf16."""
    lm = Checkpoint.open(tiny_ckpt).load_lm(dtype=torch.bfloat16)
    trainer = tr.make_trainer(lm, load_config(None).train, "cpu")
    assert trainer.params and all(p.dtype == torch.float32 for p in trainer.params)
    assert all(p.dtype == torch.bfloat16 for p in lm.parameters() if not p.requires_grad)

    lora_a = [p for name, p in lm.named_parameters() if "lora_A" in name]
    as_bf16 = [torch.nn.Parameter(p.detach().to(torch.bfloat16)) for p in lora_a]
    for weights in (lora_a, as_bf16):
        for p in weights:
            p.grad = torch.ones_like(p)  # AdamW's first step is then exactly lr for every weight
    before = [p.detach().clone() for p in lora_a + as_bf16]
    for weights in (lora_a, as_bf16):
        torch.optim.AdamW(weights, lr=1e-5, betas=(0.9, 0.95), weight_decay=0.0).step()  # the cosine's floor
    moved = [float((p.detach() != b).float().mean()) for p, b in zip(lora_a + as_bf16, before)]
    assert min(moved[:len(lora_a)]) == 1.0  # float32: every weight takes its step
    assert sum(moved[len(lora_a):]) / len(as_bf16) < 0.5  # bf16: most of them round it away
