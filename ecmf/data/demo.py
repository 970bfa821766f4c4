"""The demo corpus: a synthetic MER2025-like corpus (noisy labels, an unlabeled pool, hidden test
truth) written in MER2025's release layout, so the reader that serves real data serves it too.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

from ecmf.config import DemoConfig
from ecmf.data import synth
from ecmf.data.mer2025 import CANDIDATES, SUBTITLES, TRAIN_LABELS
from ecmf.schema import LABELS

SAMPLE_RATE = 16000
HIDDEN_TRUTH = "hidden_truth.csv"
TRUTH_COLUMNS = ["name", "discrete", "split", "test", "noisy_label", "is_noisy", "no_face",
                 "silent", "empty_text", "contradicts"]
CLASS_FREQ = (0.24, 0.20, 0.18, 0.15, 0.15, 0.08)  # MER-like: neutral, angry most; surprise rarest
# Annotation noise flips a label toward a class that humans confuse it with.
CONFUSABLE = {
    "neutral": ("sad", "worried"), "angry": ("worried", "surprise"),
    "happy": ("surprise", "neutral"), "sad": ("neutral", "worried"),
    "worried": ("sad", "angry"), "surprise": ("happy", "angry"),
}
VALENCE = {"neutral": 0.0, "angry": -3.0, "happy": 3.0, "sad": -3.0, "worried": -2.0,
           "surprise": 1.0}
CONTRADICT_RATE = 0.09  # subtitles cueing another class than face and voice (sarcasm, masking)
UNCUED_RATE = 0.35  # non-neutral clips whose subtitle carries no emotional cue

# Subtitle phrases as (english, chinese) pairs, so both columns of subtitle_chieng.csv agree.
OPENERS = [("", ""), ("", ""), ("Hey.", "嘿。"), ("Listen.", "听着。"), ("Okay.", "好的。"),
           ("Hmm.", "嗯。"), ("Right.", "对。")]
PLAIN = [
    ("The meeting starts at nine tomorrow.", "明天的会议九点开始。"),
    ("I put the documents on your desk.", "我把文件放在你桌上了。"),
    ("We need to buy some rice and eggs.", "我们需要买些米和鸡蛋。"),
    ("He said the train leaves at six.", "他说火车六点出发。"),
    ("Can you pass me the remote?", "你能把遥控器递给我吗？"),
    ("Let me check the schedule first.", "我先查一下日程。"),
    ("The weather will change this weekend.", "这个周末天气会变。"),
    ("I will call you after dinner.", "我晚饭后给你打电话。"),
    ("She moved to the third floor last month.", "她上个月搬到了三楼。"),
    ("Where did you park the car?", "你把车停在哪里了？"),
    ("Tell me what happened next.", "告诉我接下来发生了什么。"),
    ("The report is due on Friday.", "报告周五截止。"),
    ("We talked about it yesterday.", "我们昨天谈过这件事。"),
    ("I am going back to the office now.", "我现在回办公室。"),
    ("Did you lock the door?", "你锁门了吗？"),
    ("Let's sit down and go through it.", "我们坐下来过一遍吧。"),
    ("My brother is coming over tonight.", "我弟弟今晚过来。"),
    ("The shop closes at ten.", "商店十点关门。"),
]
# Cue phrases per class: strong ones name the emotion, weak ones hint at it and share words
# with other classes ("upset", "oh no", "not happy").
STRONG = {
    "angry": [("I am absolutely furious with you!", "我对你简直怒不可遏！"),
              ("How dare you lie to me!", "你竟敢骗我！"),
              ("Get out of here right now!", "马上给我出去！"),
              ("This is outrageous, I hate it!", "这太过分了，我恨透了！"),
              ("I am so angry I could scream!", "我气得想大叫！")],
    "happy": [("This is wonderful, I'm so happy!", "太棒了，我好开心！"),
              ("I love it, thank you so much!", "我太喜欢了，非常感谢！"),
              ("We won, this is the best day ever!", "我们赢了，这是最棒的一天！"),
              ("Haha, that's hilarious!", "哈哈，太好笑了！"),
              ("I'm thrilled for you!", "我真为你高兴！")],
    "sad": [("I miss her so much, I can't stop crying.", "我好想她，忍不住一直哭。"),
            ("Everything is lost, I feel so hopeless.", "一切都没了，我感到很绝望。"),
            ("He's gone and he's never coming back.", "他走了，再也不会回来了。"),
            ("I'm heartbroken.", "我心都碎了。"),
            ("I feel so lonely and sad.", "我感到好孤独好难过。")],
    "worried": [("I'm terrified something bad will happen.", "我很害怕会出什么事。"),
                ("What if they never find him?", "万一他们永远找不到他怎么办？"),
                ("I'm so anxious I can't sleep.", "我焦虑得睡不着。"),
                ("Please, I'm really scared.", "求你了，我真的很害怕。"),
                ("I'm worried sick about her.", "我担心她担心得要命。")],
    "surprise": [("Wow, I can't believe it!", "哇，真不敢相信！"),
                 ("What? No way, really?", "什么？不会吧，真的吗？"),
                 ("Oh my god, you're here!", "天哪，你怎么来了！"),
                 ("That's totally unexpected!", "这完全出乎意料！"),
                 ("Seriously? I'm shocked!", "真的吗？我太震惊了！")],
}
WEAK = {
    "angry": [("That is a bit annoying.", "这有点烦人。"),
              ("I'm not happy about this.", "我对此不太满意。"),
              ("Why would you do that?", "你为什么要那样做？"),
              ("Stop it, seriously.", "别闹了，说真的。"),
              ("You never listen to me.", "你从来不听我说。"),
              ("I'm upset about what you did.", "你做的事让我很不爽。")],
    "happy": [("That sounds nice.", "听起来不错。"), ("Good, I like that.", "好，我喜欢。"),
              ("Not bad at all.", "一点也不差。"), ("Glad you could make it.", "很高兴你能来。"),
              ("That went pretty well.", "进展得挺顺利。")],
    "sad": [("I'm a little down today.", "我今天有点低落。"),
            ("It didn't work out in the end.", "最后还是没成。"),
            ("I'm upset, I guess.", "我想我有点难过。"),
            ("Never mind, it doesn't matter anymore.", "算了，已经无所谓了。"),
            ("I wish things were different.", "我希望事情不是这样。")],
    "worried": [("I'm not sure this will work.", "我不确定这能行。"),
                ("Are you sure it's safe?", "你确定安全吗？"),
                ("I hope nothing goes wrong.", "希望别出什么差错。"),
                ("That makes me a little nervous.", "这让我有点紧张。"),
                ("Oh no, what do we do now?", "哦不，我们现在怎么办？")],
    "surprise": [("Oh, really?", "哦，真的吗？"), ("I didn't expect that.", "我没想到。"),
                 ("Huh, that's new.", "咦，这倒是新鲜。"),
                 ("Wait, what did you say?", "等等，你说什么？"),
                 ("Oh no, already?", "哦不，已经这样了？")],
}
# Masking and sarcasm: negative feelings said with positive words.
MASKING = [("I'm fine, really.", "我没事，真的。"),
           ("Everything is great, don't worry.", "一切都很好，别担心。"),
           ("Oh great, just what I needed.", "哦，太好了，正是我需要的。"),
           ("Sure, that's just perfect.", "行啊，真是完美。")]


def _pick(rng: np.random.Generator, items: list):
    return items[rng.integers(len(items))]


def _subtitle(label: str, contradicts: bool, rng: np.random.Generator) -> tuple[str, str]:
    if contradicts:
        if label in ("angry", "sad", "worried") and rng.random() < 0.5:
            core = _pick(rng, MASKING)
        else:
            other = _pick(rng, [c for c in LABELS if c not in (label, "neutral")])
            core = _pick(rng, STRONG[other] if rng.random() < 0.6 else WEAK[other])
    elif label == "neutral" or rng.random() < UNCUED_RATE:
        core = _pick(rng, PLAIN)
    else:
        core = _pick(rng, STRONG[label] if rng.random() < 0.5 else WEAK[label])
    parts = [_pick(rng, OPENERS), core]
    if rng.random() < 0.4:
        parts.append(_pick(rng, PLAIN))
    english = " ".join(p[0] for p in parts if p[0])
    chinese = "".join(p[1] for p in parts)
    return english, chinese


def _exact_flags(n: int, rate: float, rng: np.random.Generator) -> np.ndarray:
    """A boolean mask with exactly round(rate * n) True entries at random places."""
    flags = np.zeros(n, dtype=bool)
    flags[rng.permutation(n)[: int(round(rate * n))]] = True
    return flags


def plan_corpus(cfg: DemoConfig) -> pd.DataFrame:
    """Labels, splits, label noise, hard-case flags and subtitles of every clip (no media).

    Pure and cheap; one row per clip in clip-index order, so row `i` is rendered with the seed
    `(cfg.seed, i)` whatever the number of workers.
    """
    n_train, n_pool, n_cand = cfg.n_train, cfg.n_pool, cfg.n_candidates
    n = n_train + n_pool + n_cand
    # One generator per aspect: changing how texts are drawn does not change the labels.
    r_name, r_label, r_noise, r_flag, r_text, r_val = (
        np.random.default_rng([cfg.seed, 0, k]) for k in range(6))
    split = np.array(["train"] * n_train + ["pool"] * n_pool + ["candidate"] * n_cand)
    test = np.zeros(n, dtype=bool)
    test[n_train + n_pool + r_label.permutation(n_cand)[: cfg.n_test]] = True
    labels = np.array(LABELS)[r_label.choice(len(LABELS), size=n, p=CLASS_FREQ)]
    noisy = np.where(split == "train", labels, "")
    is_noisy = np.zeros(n, dtype=bool)
    is_noisy[r_noise.permutation(n_train)[: int(round(cfg.noise_rate * n_train))]] = True
    for i in np.flatnonzero(is_noisy):
        noisy[i] = _pick(r_noise, list(CONFUSABLE[labels[i]]))
    valence = np.array([VALENCE[c] + r_val.normal(0, 0.7) if c else np.nan for c in noisy])
    no_face = _exact_flags(n, cfg.no_face_rate, r_flag)
    silent = _exact_flags(n, cfg.silent_rate, r_flag)
    empty = _exact_flags(n, cfg.empty_text_rate, r_flag)
    contradicts = np.zeros(n, dtype=bool)
    has_text = np.flatnonzero(~empty)
    contradicts[r_flag.permutation(has_text)[: int(round(CONTRADICT_RATE * n))]] = True
    texts = [("", "") if e else _subtitle(c, k, r_text)
             for c, e, k in zip(labels, empty, contradicts)]
    return pd.DataFrame({
        "name": [f"sample_{k:08d}" for k in r_name.permutation(n)],
        "discrete": labels, "split": split, "test": test, "noisy_label": noisy,
        "is_noisy": is_noisy, "valence": np.round(np.clip(valence, -5, 5), 2),
        "no_face": no_face, "silent": silent, "empty_text": empty, "contradicts": contradicts,
        "english": [t[0] for t in texts], "chinese": [t[1] for t in texts],
    })


def _write_clip(job: tuple) -> str:
    out, index, name, label, no_face, silent, seed, size, fps, seconds = job
    frames, audio = synth.render_clip(label, no_face, silent, seed, index, size, fps, seconds,
                                      SAMPLE_RATE)
    synth.write_wav(Path(out) / "audio" / f"{name}.wav", audio, SAMPLE_RATE)
    synth.write_mp4(Path(out) / "video" / f"{name}.mp4", frames, audio, fps, SAMPLE_RATE)
    return name


def _render_all(jobs: list[tuple], workers: int) -> None:
    if workers <= 1 or len(jobs) < 2 * workers:
        for job in jobs:
            _write_clip(job)
        return
    # spawn, not fork: callers may hold threads (Ray, torch) that a fork would copy mid-lock.
    # An executor, not a Pool: a worker that dies raises BrokenProcessPool instead of hanging.
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=ctx) as pool:
        for _ in pool.map(_write_clip, jobs, chunksize=8):
            pass


def _prepare_out(out: Path) -> None:
    """Make `out` empty: a leftover clip would join the corpus, since readers list the files."""
    if out.exists() and any(out.iterdir()):
        if not (out / HIDDEN_TRUTH).is_file():
            raise FileExistsError(f"{out}: not empty and not a demo corpus (no {HIDDEN_TRUTH}); "
                                  "give an empty or new directory")
        (out / HIDDEN_TRUTH).unlink()  # first: an interrupted rewrite never looks complete
        for sub in ("video", "audio"):
            shutil.rmtree(out / sub, ignore_errors=True)
        for csv in (SUBTITLES, TRAIN_LABELS, CANDIDATES):
            (out / csv).unlink(missing_ok=True)
    (out / "video").mkdir(parents=True, exist_ok=True)
    (out / "audio").mkdir(parents=True, exist_ok=True)


def write_demo_corpus(cfg: DemoConfig, out: str | Path) -> dict:
    """Write the demo corpus in MER2025's release layout under `out`; return a summary dict
    (counts per split, per class, noise, hard cases, seconds taken).

    `out` must be empty, new, or an earlier demo corpus (which is replaced). hidden_truth.csv is
    written last, so its presence marks a complete corpus. Clips are written by `cfg.workers`
    spawned processes: a script calling this needs the `if __name__ == "__main__":` guard.
    """
    start = time.perf_counter()
    out = Path(out)
    _prepare_out(out)
    plan = plan_corpus(cfg)
    jobs = [(str(out), i, r.name, r.discrete, bool(r.no_face), bool(r.silent), cfg.seed, cfg.size,
             cfg.fps, cfg.seconds) for i, r in enumerate(plan.itertuples(index=False))]
    workers = cfg.workers or os.cpu_count() or 1
    _render_all(jobs, workers)

    by_name = plan.sort_values("name")  # rows in name order reveal neither split nor class
    by_name[["name", "chinese", "english"]].to_csv(out / SUBTITLES, index=False)
    train = by_name[by_name.split == "train"]
    train[["name", "noisy_label", "valence"]].rename(columns={"noisy_label": "discrete"}).to_csv(
        out / TRAIN_LABELS, index=False)
    by_name.loc[by_name.split == "candidate", ["name"]].to_csv(
        out / CANDIDATES, index=False)
    by_name[TRUTH_COLUMNS].to_csv(out / HIDDEN_TRUTH, index=False)
    return {
        "out": str(out),
        "clips": len(plan),
        "splits": {s: int((plan.split == s).sum()) for s in ("train", "pool", "candidate")},
        "test": int(plan.test.sum()),
        "classes": {c: int((plan.discrete == c).sum()) for c in LABELS},
        "train_classes": {c: int((train.noisy_label == c).sum()) for c in LABELS},
        "noise": {"rate": cfg.noise_rate, "flipped": int(plan.is_noisy.sum())},
        "hard_cases": {k: int(plan[k].sum())
                       for k in ("no_face", "silent", "empty_text", "contradicts")},
        "workers": workers,
        "seconds": round(time.perf_counter() - start, 2),
    }
