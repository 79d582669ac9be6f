"""Configuration of the train stage (pydantic, documented defaults)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, field_validator

from ferclean.classes import FER7
from ferclean.noise import RelabelConfig

Method = Literal["ce", "scn", "ulcag", "ulcag_target", "ulcag_aux", "eac"]
METHODS: tuple[str, ...] = ("ce", "scn", "ulcag", "ulcag_target", "ulcag_aux", "eac")


def physical_cores() -> int:
    """Physical cores this process may run on (affinity mask; hyper-threads not counted when psutil knows)."""
    import os

    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        usable = os.cpu_count() or 1
    try:
        import psutil

        logical, physical = psutil.cpu_count(), psutil.cpu_count(logical=False)
        if logical and physical and logical > physical:
            usable = max(1, usable * physical // logical)
    except ImportError:
        pass
    return max(1, usable)


class TrainConfig(BaseModel):
    """Settings of `run_train` (cross-fitted training of one or more methods)."""

    classes: list[str] = Field(default_factory=lambda: list(FER7), description="class order of probs")
    methods: list[Method] = Field(default_factory=lambda: ["ulcag"], description="methods to cross-fit")
    splits: list[str] = Field(default_factory=lambda: ["train", "valid", "test"], description="labelled splits used")
    folds: int = Field(3, ge=2, description="K of the K-fold cross-fitting")
    final_model: bool = Field(True, description="train the fold=-1 model on all samples with final labels")
    final_method: Method = Field("ulcag", description="method of the final model and of its label verdicts")
    relabel: RelabelConfig = Field(
        default_factory=RelabelConfig, description="the verdict rule whose final labels the final model trains on; "
        "the pipeline fills it from the config file's `relabel:` section, so one RelabelConfig drives both stages "
        "(not part of the cross-fitted folds' keys: changing it retrains only the final model)")
    # Backbone and input.
    backbone: Literal["auto", "cnn", "resnet18"] = Field("auto", description="auto: cnn on CPU, resnet18 on CUDA")
    input_size: int = Field(48, ge=16, description="square input side in pixels (crops are resized)")
    width: int = Field(32, ge=4, description="channels of the compact CNN's first block (doubles per block)")
    pretrained: str | None = Field(None, description="path to a ResNet-18 state dict; never downloaded")
    init_model: str | None = Field(
        None, description="warm start: folder of an earlier run's model (a curate run's OUT/model) that every "
        "cross-fitted fold and the final model start from; same backbone, input size and width, classes matched "
        "by name (ferclean.train.warm_start). Its fingerprint goes into the fold keys, `runs` and model.json")
    # Optimisation.
    epochs: int = Field(8, ge=1, description="the FER2013 peer recipe used 8 epochs")
    batch_size: int = Field(64, ge=2, description="larger batches give steadier gamma and templates; smaller ones more steps on CPU")
    optimizer: Literal["adam", "sgd"] = Field(
        "adam", description="adam by default: SGD at the paper's LR 0.01-0.1 did not train the from-scratch CNN "
        "within a CPU epoch budget (25% vs 42% held-out accuracy after 6 epochs on 2k FER2013 crops)")
    lr: float = Field(0.001, gt=0, description="initial LR (paper, SGD: 0.01), / 10 at lr_milestones of the epochs")
    aux_lr: float = Field(0.0005, gt=0, description="LR of the auxiliary branch (paper: half the target LR)")
    lr_milestones: tuple[float, float] = Field((1 / 3, 2 / 3), description="paper: epochs 10 and 20 of 30, as fractions")
    momentum: float = 0.9
    weight_decay: float = 5e-4
    augment: bool = Field(True, description="random flip + small affine jitter")
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    fold_workers: int | Literal["auto"] = Field(
        "auto", description="train the K cross-fitted folds in this many spawned processes at once, each with "
        "threads_per_fold_worker torch threads; 1 = one after another in this process; auto = min(folds, physical "
        "cores) on a CPU when the collection has at least `fold_workers_min_samples` samples (a spawned worker "
        "costs a few seconds of start-up), else 1; 1 on CUDA. Not part of the fold keys")
    fold_workers_min_samples: int = Field(2000, ge=0, description="fold_workers auto: fewer samples than this "
                                          "train the folds one after another in this process")
    num_threads: int = Field(1, ge=1, le=2, description="torch CPU threads; 1 by default: on 2 shared cores two threads thrashed (28 vs 475 img/s measured)")
    # Target branch (eqs. 1-4) and SCN.
    phi: float = Field(0.8, gt=0, lt=1, description="ULC-AG high-confidence ratio")
    theta: float = Field(0.15, ge=0, description="ULC-AG rank-regularisation margin")
    scn_ratio: float = Field(0.7, gt=0, lt=1, description="SCN high-importance ratio beta")
    scn_margin: float = Field(0.15, ge=0, description="SCN RR margin delta_1")
    scn_delta: float = Field(0.2, ge=0, description="SCN relabel margin delta_2")
    scn_rr_weight: float = Field(0.5, ge=0, le=1, description="SCN gamma in gamma*RR + (1-gamma)*WCE")
    relabel_start: float = Field(0.34, ge=0, le=1, description="fraction of epochs before in-training relabeling (SCN: 10/40, ULC-AG: after the 10-epoch warm-up)")
    # EAC (Zhang et al., ECCV 2022): CE on randomly erased images + flip consistency of the class activation maps.
    eac_lambda: float = Field(0.3, ge=0, description="weight of EAC's consistency loss MSE(CAM(x), flip(CAM(flip x))) "
                              "(paper: 5 with a pretrained ResNet-50). 0.3: the best of 5, 1, 0.3, 0.1 on 3,500 FER2013 "
                              "train rows with the compact CNN (5 and 1 kept it from learning within 6 epochs; "
                              "benchmarks/results/eac.md)")
    eac_erase_p: float = Field(0.5, ge=0, le=1, description="EAC: probability that an image gets a random-erasing "
                               "rectangle (torchvision RandomErasing's default, as in the EAC code)")
    eac_erase_scale: tuple[float, float] = Field((0.02, 0.25), description="EAC: erased area as a fraction of the "
                                                 "image, min and max (EAC code: RandomErasing(scale=(0.02, 0.25)))")
    # Auxiliary branch (eqs. 5-13).
    au_dim: int = Field(16, ge=1, description="per-AU node feature size d of the linear map f -> M x d")
    gcn_channels: int = Field(64, ge=1, description="channels of each GCN layer (paper: 64)")
    aux_warmup: float = Field(0.34, ge=0, le=1, description="fraction of epochs before the aux branch joins (beta of eqs. 12-13)")
    template_momentum: float = Field(0.9, ge=0, lt=1, description="EMA momentum of the semantic templates across batches")
    semantic_margin: float = Field(0.0, ge=0, description="margin of the relabel rule eq. 10 (paper: 0)")
    relabel_guard: Literal["none", "classifier"] = Field(
        "classifier", description="ULC-AG in-training relabeling: classifier (default) = apply eq. 10 only where the "
        "nearest other template is also the classifier's argmax; none = eq. 10 as published. On the FER2013 train "
        "split (pseudo AUs from 48 px crops) eq. 10 alone flipped ~7,000 labels per fold and left a model that agrees "
        "with the FER+ crowd 0.545 of the time; guarded: ~2,800 flips, 0.660 (ce: 0.632); "
        "benchmarks/results/relabel_rules_session2.md")
    pseudo_aus: Literal["auto", "aus", "prototype"] = Field(
        "auto", description="aus: the aus table; prototype: EMFACS prototypes of the given label; auto: aus if present")
    au_view: bool = Field(True, description="also cross-fit the AU view (logistic regression on the aus table's "
                          "intensities, same folds; ferclean.au_view) and save it with the final model; the "
                          "verdicts combine it with the network (RelabelConfig.au_view_weight). Needs the aus table")
    tta_flip: bool = Field(True, description="average predictions over the image and its mirror")
    checkpoint: bool = Field(True, description="save a checkpoint per epoch; resume an interrupted fit")
    amp: Literal["auto", "bf16", "off"] = Field(
        "auto", description="mixed precision (bfloat16 autocast; losses, alpha and softmax stay float32). auto: on "
        "CUDA, and on CPUs with native bf16 (AVX512-BF16), where the default CPU network cross-fits FER2013 1.9x "
        "faster with the same flag F1 and final-label accuracy (benchmarks/results/noise_real_full.md); bf16: "
        "always; off: float32 everywhere")

    @field_validator("fold_workers")
    @classmethod
    def _positive_workers(cls, v: int | str) -> int | str:
        if isinstance(v, int) and v < 1:
            raise ValueError("fold_workers must be >= 1 or 'auto'")
        return v

    def resolved_fold_workers(self, n_folds: int, n_samples: int | None = None) -> int:
        """Processes that train `n_folds` cross-fitted folds of `n_samples` samples at once (1 = in this
        process)."""
        if self.fold_workers == "auto":
            small = n_samples is not None and n_samples < self.fold_workers_min_samples
            want = 1 if (small or self.resolved_device() == "cuda") else physical_cores()
        else:
            want = int(self.fold_workers)
        return max(1, min(want, n_folds))

    def threads_per_fold_worker(self, workers: int) -> int:
        """torch threads of each fold process: the cores shared out, at most num_threads' limit (2), at least 1."""
        return max(1, min(2, physical_cores() // max(workers, 1)))

    def resolved_amp(self) -> bool:
        """Whether training and cross-fit scoring run under bfloat16 autocast."""
        from ferclean.hardware import cpu_has_native_bf16

        if self.amp != "auto":
            return self.amp == "bf16"
        return self.resolved_device() == "cuda" or cpu_has_native_bf16()

    def resolved_device(self) -> str:
        import torch

        if self.device == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        return self.device

    def resolved_backbone(self) -> str:
        if self.backbone != "auto":
            return self.backbone
        return "resnet18" if self.resolved_device() == "cuda" else "cnn"
