"""The shipped default model's recipe: which code it learns from, and how it is trained.

`make default-model` runs the whole recipe from nothing:

    python -m assistant.training.recipe gather DATA       # corpus: stdlib + pinned packages
    python -m assistant.training.recipe train DATA RUNS   # the STAGES, each an `mtp-assistant train`
    python -m assistant.training.recipe ship RUNS DATA    # copy the last stage's model into models/default

Training comes in stages so that the model can grow across sessions: each stage after the
first starts from the previous stage's model with a fresh learning-rate schedule, and a
stage that was interrupted resumes from its last checkpoint.

The shipped stage trains on an NVIDIA GPU (minutes there; days on a laptop CPU). Where the GPU
is another machine, as when this project was lent one for a few minutes: `gather` here, copy
DATA/train there, run `python -m assistant.training.recipe train DATA RUNS` with that
machine's CUDA build of torch (`--seconds S` fits a fresh schedule into S seconds of training),
copy RUNS/stage-1 back and `ship` here (the card's CPU measurements belong to this machine).

Sources are the running Python's standard library (PSF license) and the source of
permissively licensed packages fetched as pinned wheels from the package registry.
Held-out packages go to DATA/heldout and are never trained on; the model card's
held-out figures and the speed benchmark read them.

The package, one module a job: `sources` (the pinned corpus and `gather`), `stages` (STAGES
and `train_stages`), `ship` (copy and measure), `model_card` (card.json's fields), `card`
(CARD.md) and `__main__` (the commands above).
"""
