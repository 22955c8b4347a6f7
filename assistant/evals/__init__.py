"""Quality evaluations of a model beyond loss: HumanEval pass@1 and next-line exact match."""
