"""Typed configuration: frozen nested dataclasses hold every default and its one-line comment.

The dataclasses check their own values (with keys relative to their section; `from_dict`
adds the full path), while names that components register (layouts, encoders, detectors,
models, LLM backends) are checked by `ecmf.stages.common.validate`. `ecmf config` shows every
key with the comment written beside it here (and in `ecmf.config.extract`, which holds the
extraction section).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ecmf.config.dicts import check, section
from ecmf.config.extract import ExtractConfig

TRAIN_BACKENDS = ("auto", "gloo", "nccl")  # TrainConfig.backend
TRAIN_STRATEGIES = ("folds", "ddp")  # TrainConfig.strategy
LR_SCHEDULES = ("constant", "cosine")  # TrainConfig.lr_schedule


@section("ray")
@dataclass(frozen=True)
class RayConfig:
    # "local": a new embedded Ray for this command (under `ray job submit`, RAY_ADDRESS's
    # cluster); "auto": the cluster running on this machine; or a cluster's address.
    address: str | None = "local"
    num_cpus: int | None = None  # embedded Ray only; None: max(4, cores) logical CPUs
    object_store_mb: int = 512  # embedded Ray only
    # Ray Data hangs silently for 30 minutes by default; this turns a stalled stage into an error.
    no_progress_timeout_s: int = 600

    def __post_init__(self):
        check(self.num_cpus is None or self.num_cpus > 0, "num_cpus", "> 0", self.num_cpus)
        check(self.object_store_mb >= 64, "object_store_mb", ">= 64", self.object_store_mb)


@section("corpus")
@dataclass(frozen=True)
class CorpusConfig:
    root: str = ""  # a directory in MER2025's release layout
    layout: str = "mer2025"  # "mer2025": the release layout under `root`; "csv": `manifest`
    text_column: str = "english"  # subtitle_chieng.csv column: "english" or "chinese"
    # layout csv: columns path[,text,label,name,split,audio_path]; paths relative to the CSV
    manifest: str = ""
    encoding: str = "utf-8"  # of the corpus' CSV files (either layout), e.g. "gbk"

    def __post_init__(self):
        import codecs

        check(self.text_column in ("english", "chinese"), "text_column",
               "'english' or 'chinese'", self.text_column)
        try:
            codecs.lookup(self.encoding)
        except LookupError:
            check(False, "encoding", "a Python codec name such as utf-8 or gbk",
                   self.encoding)


@section("demo")
@dataclass(frozen=True)
class DemoConfig:
    """Size and difficulty of the generated demo corpus (`ecmf prepare-demo`)."""

    n_train: int = 480  # labeled clips (noisy labels)
    n_pool: int = 960  # unlabeled clips that are not candidates
    n_candidates: int = 420  # clips a submission must cover
    n_test: int = 360  # candidates with hidden truth (the clean test set)
    noise_rate: float = 0.2  # training labels flipped toward a confusable class
    no_face_rate: float = 0.06  # clips whose frames show no face
    silent_rate: float = 0.06  # clips without sound
    empty_text_rate: float = 0.08  # clips with an empty subtitle
    seconds: float = 2.0  # length of each clip
    fps: int = 8  # frames per second of each clip
    size: int = 96  # frame width and height in pixels
    seed: int = 0  # the corpus is a function of this seed and the sizes above
    workers: int = 0  # processes writing clips; 0: one per core
    # `ecmf demo` only: features trained and scored alone for its results table, each a
    # training run of its own; null: every extracted feature, []: none.
    singles: list[str] | None = None

    def __post_init__(self):
        for name in ("n_train", "n_pool", "n_candidates"):
            check(getattr(self, name) > 0, f"{name}", "> 0", getattr(self, name))
        check(0 < self.n_test <= self.n_candidates, "n_test",
               f"between 1 and n_candidates ({self.n_candidates})", self.n_test)
        for name in ("noise_rate", "no_face_rate", "silent_rate", "empty_text_rate"):
            v = getattr(self, name)
            check(0.0 <= v < 1.0, f"{name}", "a rate in [0, 1)", v)
        check(self.size >= 48 and self.size % 16 == 0, "size", "a multiple of 16, >= 48",
               self.size)


def _default_engine_kwargs() -> dict[str, Any]:
    # Every prompt opens with the same instructions: prefix caching computes them once per engine.
    return {"max_model_len": 4096, "enable_prefix_caching": True}


@section("enrich")
@dataclass(frozen=True)
class EnrichConfig:
    """LLM text enrichment and label votes: which backend and model, and how to generate."""

    backend: str = "transformers"  # "transformers" (any machine) or "vllm" (GPU, `gpu` extra)
    model: str = "Qwen/Qwen2.5-7B-Instruct"  # hub id or local path of the instruction model
    # Passes to run: "enrich" -> enrich/enriched.parquet, "vote" -> enrich/votes.parquet.
    tasks: list[str] = field(default_factory=lambda: ["enrich"])
    language: str = "en"  # prompt template language: "en" or "zh"
    max_new_tokens: int = 64  # enrichment
    vote_max_new_tokens: int = 96  # a JSON object of six scores takes about 50 tokens
    batch_size: int = 8  # rows per map_batches call (transformers) or per engine batch (vllm)
    pool_size: int = 1  # transformers: actors; vllm: engine replicas (the processor's concurrency)
    num_gpus: float = 0.0  # transformers only; vLLM takes tensor_parallel_size GPUs per replica
    num_cpus: float = 1.0  # transformers only
    # vLLM engine arguments (vllm.EngineArgs), e.g. gpu_memory_utilization, max_num_seqs, dtype.
    engine_kwargs: dict[str, Any] = field(default_factory=_default_engine_kwargs)
    # Reuse earlier outputs of the same sample, model, prompt version and prompt; false: redo all.
    cache: bool = True

    def __post_init__(self):
        check(self.language in ("en", "zh"), "language", "'en' or 'zh'", self.language)
        check(bool(self.tasks) and set(self.tasks) <= {"enrich", "vote"}
               and len(set(self.tasks)) == len(self.tasks), "tasks",
               "a non-empty list of distinct tasks among ['enrich', 'vote']", self.tasks)
        check(self.max_new_tokens > 0, "max_new_tokens", "> 0", self.max_new_tokens)
        check(self.vote_max_new_tokens > 0, "vote_max_new_tokens", "> 0",
               self.vote_max_new_tokens)
        check(self.batch_size > 0 and self.pool_size > 0, "batch_size/pool_size", "> 0",
               (self.batch_size, self.pool_size))
        check(self.num_gpus >= 0 and self.num_cpus >= 0, "num_cpus/num_gpus", ">= 0",
               (self.num_cpus, self.num_gpus))
        check(isinstance(self.engine_kwargs, dict) and "model" not in self.engine_kwargs,
               "engine_kwargs", "a mapping without 'model' (set enrich.model)",
               self.engine_kwargs)


@section("train")
@dataclass(frozen=True)
class TrainConfig:
    """Fusion model and its k-fold training (Ray tasks per fold, or Ray Train DDP)."""

    model: str = "ecmf"  # registered fusion model: ecmf, mertools-attention, concat-mlp
    features: list[str] = field(default_factory=list)  # empty: every feature in the store
    hidden: int = 128  # width of the modality tokens
    heads: int = 4  # attention heads (hidden must be a multiple)
    layers: int = 1  # self-attention blocks across the modality tokens
    dropout: float = 0.3  # inside the model
    modality_dropout: float = 0.1  # chance a present modality is hidden in a training batch
    lr: float = 1e-3  # AdamW learning rate
    lr_schedule: str = "constant"  # "constant", or "cosine": to 0 over the fold's steps
    weight_decay: float = 1e-4  # AdamW weight decay
    label_smoothing: float = 0.0  # of the cross-entropy loss
    class_weights: str = "none"  # "none" or "balanced" (inverse class frequency of each fold)
    epochs: int = 40  # per fold; the epoch kept is chosen by `select_epoch`
    # How a fold's epoch is chosen, never on the fold it is scored on (its out-of-fold WAF is
    # what the rounds and predict compare): "inner": the best WAF on an inner split of the
    # fold's labeled training rows (`inner_fraction` of each class, held out of its training);
    # "last": the last epoch, every labeled row trained on.
    select_epoch: str = "inner"
    # Evaluate, choose and keep a running average of the weights (an exponential moving average
    # over about this many epochs of steps; a plain mean until that many steps are in it)
    # instead of the last step's weights, whose step-to-step noise it smooths (MELD dev:
    # docs/benchmarks.md); 0: the weights as trained.
    average_epochs: float = 1.0
    inner_fraction: float = 0.15  # "inner": share of each class's labeled training rows held out
    batch_size: int = 32  # rows per optimiser step
    folds: int = 5  # stratified k-fold cross-validation over the labeled set
    seed: int = 0  # folds, initialisation and batch order
    # "folds": a Ray task per fold, alone on the whole table (a lost worker costs its fold);
    # "ddp": one Ray Train run, all workers on each fold (a model too big for one device).
    strategy: str = "folds"
    num_workers: int = 0  # folds at once (0: as many as the cluster holds); DDP: workers (0: 1)
    # A training table up to this size goes to the workers through the object store, read
    # once; a larger one each fold task reads from the store, and DDP streams a shard to each.
    in_memory_mb: int = 2048
    use_gpu: bool = False  # one GPU per worker (fold task or DDP worker)
    cpus_per_worker: float = 1.0  # CPUs per fold task or DDP worker (also its torch threads)
    storage_path: str = ""  # fold checkpoints (local path or URI); empty: <workdir>/ray_results
    max_failures: int = 2  # failed fold tasks (DDP: worker-group restarts) before failing
    # Process group of the workers: "auto" (NCCL if use_gpu and the driver sees CUDA, else gloo),
    # "gloo", or "nccl" (a CPU-only head driving CUDA workers); see ecmf.train.fit.torch_backend.
    backend: str = "auto"

    def __post_init__(self):
        check(self.folds >= 2, "folds", ">= 2", self.folds)
        check(self.backend in TRAIN_BACKENDS, "backend", f"one of {TRAIN_BACKENDS}",
              self.backend)
        check(self.backend != "nccl" or self.use_gpu, "backend",
              "'auto' or 'gloo' when train.use_gpu is false (NCCL takes CUDA tensors only)",
              self.backend)
        check(self.class_weights in ("none", "balanced"), "class_weights",
               "'none' or 'balanced'", self.class_weights)
        check(0.0 <= self.label_smoothing < 1.0, "label_smoothing", "in [0, 1)",
               self.label_smoothing)
        check(self.max_failures >= 0, "max_failures", ">= 0", self.max_failures)
        check(self.hidden % self.heads == 0, "hidden", f"a multiple of heads ({self.heads})",
               self.hidden)
        check(0.0 <= self.dropout < 1.0, "dropout", "in [0, 1)", self.dropout)
        check(0.0 <= self.modality_dropout < 1.0, "modality_dropout", "in [0, 1)",
               self.modality_dropout)
        check(self.epochs > 0 and self.batch_size > 0, "epochs/batch_size", "> 0",
               (self.epochs, self.batch_size))
        check(self.num_workers >= 0, "num_workers", ">= 0", self.num_workers)
        check(self.lr_schedule in LR_SCHEDULES, "lr_schedule", f"one of {LR_SCHEDULES}",
              self.lr_schedule)
        check(self.select_epoch in ("inner", "last"), "select_epoch", "'inner' or 'last'",
              self.select_epoch)
        check(self.average_epochs >= 0.0, "average_epochs", ">= 0", self.average_epochs)
        check(0.0 < self.inner_fraction < 0.5, "inner_fraction", "in (0, 0.5)",
              self.inner_fraction)
        check(self.strategy in TRAIN_STRATEGIES, "strategy", f"one of {TRAIN_STRATEGIES}",
              self.strategy)
        check(self.in_memory_mb >= 0, "in_memory_mb", ">= 0 (0: never through the object store)",
              self.in_memory_mb)


@section("predict")
@dataclass(frozen=True)
class PredictConfig:
    """Fold-ensemble inference over the store (candidates, the pool) with Ray Data."""

    batch_size: int = 1024  # store rows per map_batches call
    pool_size: int = 1  # predictor actors
    num_cpus: float = 1.0  # per actor (also its torch threads)
    num_gpus: float = 0.0  # per actor; > 0 runs the fold models on the GPU

    def __post_init__(self):
        check(self.batch_size > 0 and self.pool_size > 0, "batch_size/pool_size", "> 0",
               (self.batch_size, self.pool_size))
        check(self.num_cpus > 0 and self.num_gpus >= 0, "num_cpus/num_gpus",
               "num_cpus > 0, num_gpus >= 0", (self.num_cpus, self.num_gpus))


@section("pseudo")
@dataclass(frozen=True)
class PseudoConfig:
    """Pseudo-labeling rounds over the unlabeled pool."""

    rounds: int = 2  # rounds after the first training run; 0: none
    # Pool rows chosen by (`ecmf.semi.select.SELECTION`): curriculum (a further `step` of the
    # pool per round, per class in the labeled mix), threshold, adaptive or soft.
    strategy: str = "curriculum"
    step: float = 0.2  # curriculum: share of the pool each round adds
    max_share: float = 1.0  # curriculum: share of the pool taken in all, at most
    min_soft_weight: float = 0.1  # soft: rows weighing less (relative to `weight`) are left out
    threshold: float = 0.7  # threshold: minimum fold-model confidence (after calibration)
    # Temperature-scale the pool probabilities, fitted on the previous run's out-of-fold
    # predictions against the original labels: later rounds' models grow over-confident.
    calibrate: bool = True
    max_per_round: int = 0  # cap on the labels each fold's model takes per round; 0: no cap
    # Keep the labeled set's class mix: a round takes the most rows of which every class can
    # supply its share (a class without candidates stops it); false: the candidates' own mix.
    class_balance: bool = True
    weight: float = 0.7  # sample weight of a pseudo-label in training (labeled: 1.0)
    candidates: bool = True  # the candidates join the unlabeled pool (false: the pool split alone)
    # Stop when validation WAF has not improved for this many rounds in a row. A curriculum's
    # later steps can recover from one round's dip (MELD dev: docs/benchmarks.md), and `predict`
    # picks the best round whatever ran after it.
    patience: int = 2
    # Feature sets of weak classifiers (refine.classifiers on refine.feature_sets) whose pool
    # prediction must equal the fusion model's for a pseudo-label to be taken; 0: no agreement.
    min_agree: int = 1

    def __post_init__(self):
        check(self.rounds >= 0, "rounds", ">= 0", self.rounds)
        check(0.0 < self.threshold <= 1.0, "threshold", "in (0, 1]", self.threshold)
        check(0.0 < self.step <= 1.0, "step", "in (0, 1]", self.step)
        check(0.0 < self.max_share <= 1.0, "max_share", "in (0, 1]", self.max_share)
        check(0.0 <= self.min_soft_weight < 1.0, "min_soft_weight", "in [0, 1)",
              self.min_soft_weight)
        check(0.0 < self.weight <= 1.0, "weight", "in (0, 1]", self.weight)
        check(self.min_agree >= 0, "min_agree", ">= 0", self.min_agree)


def _default_refine_weights() -> dict[str, float]:
    return {"original": 1.0, "weak": 2.0, "fusion": 2.0, "llm": 1.0}


@section("refine")
@dataclass(frozen=True)
class RefineConfig:
    """Multi-source label refinement (`ecmf refine`): weak classifiers, the fusion model's
    out-of-fold predictions and LLM votes re-label the labeled set; the original label is kept."""

    # true: pseudo-label rounds train on the labels `ecmf refine` wrote (run it first). Off by
    # default: on the demo corpus it has not yet been shown to raise test WAF.
    enabled: bool = False
    # Registered weak classifiers `ecmf refine` fits on each feature set: lr, svm, knn.
    classifiers: list[str] = field(default_factory=lambda: ["lr", "svm", "knn"])
    options: dict[str, dict[str, Any]] = field(default_factory=dict)  # e.g. {knn: {n_neighbors: 9}}
    feature_sets: list[list[str]] = field(default_factory=list)  # empty: each alone + all together
    # Soft-vote weights: original (one-hot), weak (shared by every weak source), fusion, llm.
    weights: dict[str, float] = field(default_factory=_default_refine_weights)
    threshold: float = 0.45  # the vote's share a new label needs
    min_agree: int = 2  # feature sets / sources (fusion, llm) whose top class is the new label
    use_llm_votes: bool = True  # when enrich/votes.parquet exists
    weight_by_confidence: bool = True  # training weight from the vote's confidence
    min_weight: float = 0.3  # floor of that weight
    # true: each fold model trains on labels voted by sources fit without its validation fold
    # (and the label's own fold: pairs of folds, 10 fits a source for 5 folds), and validates on
    # the original labels. false: one label per clip from sources that saw every other fold;
    # they carry a fold's validation labels into the other folds' training and lift
    # validation WAF (the rounds' stopping rule) by 2-3 points on the demo corpus.
    fold_blind: bool = True
    cpus_per_task: float = 0.5  # per weak-classifier Ray task

    def __post_init__(self):
        check(set(self.weights) <= {"original", "weak", "fusion", "llm"}
               and all(v >= 0 for v in self.weights.values()), "weights",
               "non-negative weights of original, weak, fusion, llm", self.weights)
        check(0.0 <= self.threshold <= 1.0, "threshold", "in [0, 1]", self.threshold)
        check(self.min_agree >= 1, "min_agree", ">= 1", self.min_agree)
        check(0.0 < self.min_weight <= 1.0, "min_weight", "in (0, 1]", self.min_weight)
        check(self.cpus_per_task > 0, "cpus_per_task", "> 0", self.cpus_per_task)
        check(all(s for s in self.feature_sets), "feature_sets", "non-empty sets",
               self.feature_sets)


@section("tune")
@dataclass(frozen=True)
class TuneConfig:
    """Hyperparameter search with Ray Tune (`ecmf tune`): a space over train keys, ASHA, resources.

    `space` maps a train key to `{choice: [...]}`, `{grid: [...]}`, `{uniform: [lo, hi]}`,
    `{loguniform: [lo, hi]}`, `{randint: [lo, hi]}` (both ends included) or a fixed value.
    """

    space: dict[str, Any] = field(default_factory=dict)  # train key -> its range (see above)
    num_samples: int = 16  # random draws; a space with grid keys runs each draw per grid point
    search: str = "random"  # "random": points drawn with `seed`; others ("optuna"...) if installed
    seed: int = 0  # the drawn points are a function of this seed
    scheduler: str = "asha"  # "asha": stop bad trials early; "fifo": run every trial to the end
    grace_period: int = 4  # epochs every trial runs before ASHA may stop it
    reduction_factor: float = 2.0  # ASHA keeps the best 1/reduction_factor at each rung
    cv_folds: int = 3  # folds per trial, trained epoch by epoch in lockstep (not train.folds)
    runner: str = "auto"  # "process": train in the trial's process; "folds": its folds as
    # Ray tasks at once (a worker each); "ray_train": a TorchTrainer of
    # train.num_workers DDP workers; "auto": process, or with num_workers > 1 folds (ray_train
    # under train.strategy ddp)
    max_concurrent_trials: int = 0  # 0: as many as the cluster's CPUs allow
    cpus_per_trial: float = 1.0  # the trial's process (folds, ray_train: workers on top)
    gpus_per_trial: float = 0.0  # process runner only; folds and ray_train take train.use_gpu
    max_failures: int = 1  # retries of a failed trial
    # A trial that reports nothing for this long fails the search (instead of a silent hang).
    no_progress_timeout_s: float = 900.0
    # Trials waiting with none running for this long fail the search. Longer than the above:
    # a cold GPU node pulls the GPU image (tens of GB) before a trial can start there.
    start_timeout_s: float = 3600.0
    # true: every other stage trains with the train keys of <workdir>/tune/best.yaml (the
    # search's best trial) once it exists, so one job can search, then train on the result.
    apply_best: bool = False

    def __post_init__(self):
        check(self.num_samples > 0, "num_samples", "> 0", self.num_samples)
        check(self.scheduler in ("asha", "fifo"), "scheduler", "'asha' or 'fifo'",
               self.scheduler)
        check(self.grace_period > 0, "grace_period", "> 0", self.grace_period)
        check(self.reduction_factor > 1, "reduction_factor", "> 1", self.reduction_factor)
        check(self.cv_folds >= 2, "cv_folds", ">= 2", self.cv_folds)
        check(self.start_timeout_s > 0, "start_timeout_s", "> 0", self.start_timeout_s)
        check(self.runner in ("auto", "process", "folds", "ray_train"), "runner",
               "'auto', 'process', 'folds' or 'ray_train'", self.runner)
        check(self.max_concurrent_trials >= 0, "max_concurrent_trials", ">= 0",
               self.max_concurrent_trials)
        check(self.cpus_per_trial > 0, "cpus_per_trial", "> 0", self.cpus_per_trial)
        check(self.gpus_per_trial >= 0, "gpus_per_trial", ">= 0", self.gpus_per_trial)
        check(self.max_failures >= 0, "max_failures", ">= 0", self.max_failures)
        check(self.no_progress_timeout_s > 0, "no_progress_timeout_s", "> 0",
               self.no_progress_timeout_s)


@dataclass(frozen=True)
class Config:
    workdir: str = "runs/ecmf"  # every stage reads and writes under this directory
    # The class names, in order. []: the corpus' own (`ecmf.data.manifest.with_labels`):
    # MER2025's six when every label is one of them (its layout, or a subset), else the corpus'
    # labels sorted.
    # A list fixes the set and its order (a corpus label outside it is an error).
    labels: list[str] = field(default_factory=list)
    corpus: CorpusConfig = field(default_factory=CorpusConfig)  # where the clips and labels are
    demo: DemoConfig = field(default_factory=DemoConfig)  # the generated demo corpus
    ray: RayConfig = field(default_factory=RayConfig)  # which Ray, and an embedded one's size
    extract: ExtractConfig = field(default_factory=ExtractConfig)  # `ecmf extract`
    enrich: EnrichConfig = field(default_factory=EnrichConfig)  # `ecmf enrich`
    train: TrainConfig = field(default_factory=TrainConfig)  # `ecmf train` and every fit
    predict: PredictConfig = field(default_factory=PredictConfig)  # `ecmf predict`
    pseudo: PseudoConfig = field(default_factory=PseudoConfig)  # `ecmf pseudo-label`
    refine: RefineConfig = field(default_factory=RefineConfig)  # `ecmf refine`
    tune: TuneConfig = field(default_factory=TuneConfig)  # `ecmf tune`

    def __post_init__(self):
        names = list(self.labels)
        check(not names or (len(names) >= 2 and len(set(names)) == len(names)
                            and all(isinstance(n, str) and n.strip() == n and n for n in names)),
              "labels", "[] (the corpus' labels) or two or more distinct, non-empty class names",
              self.labels)
        # Fold-blind labels of fold j come from runs over the other folds: two or more of them.
        check(not (self.refine.enabled and self.refine.fold_blind) or self.train.folds >= 3,
              "refine.fold_blind", "false, or train.folds >= 3 (fold-blind sources are fit on the "
              "folds but two)", f"true with train.folds {self.train.folds}")

    @property
    def root(self) -> Path:
        return Path(self.workdir)
