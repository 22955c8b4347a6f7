"""The near-tie allowance itself: it skips only near-ties and still catches a wrong token."""

import pytest
import torch

from tests.near_ties import GreedyAgreement

V = 5


def reference(tokens):
    """Logits where the next token is (last + 1) % V, by a margin of 1, except after token 3,
    where tokens 4 and 0 are tied to within 0.01."""
    rows = torch.zeros(len(tokens), V)
    for i, t in enumerate(tokens):
        rows[i, (t + 1) % V] = 1.0
        if t == 3:
            rows[i, 0] = 0.99
    return rows


def test_a_clear_argmax_must_match_and_a_near_tie_is_skipped():
    agreement = GreedyAgreement(reference, tolerance=0.05)
    agreement.check([1], [2, 3, 4, 0])
    assert (agreement.checked, agreement.skipped) == (3, 1)
    agreement.check([1], [2, 3, 0, 1])  # 0 after 3: the other side of the tie
    with pytest.raises(AssertionError, match="token 1 is 4, the reference's argmax is 3"):
        agreement.check([1], [2, 4])
    with pytest.raises(AssertionError, match="2 of 10 positions were near-ties"):
        agreement.assert_few_skipped(0.1)
    agreement.assert_few_skipped(0.25)


def test_sequences_may_part_only_at_a_near_tie():
    agreement = GreedyAgreement(reference, tolerance=0.05)
    agreement.check_same_until_a_near_tie([1], [2, 3, 4, 0], [2, 3, 4, 0])
    agreement.check_same_until_a_near_tie([1], [2, 3, 4, 0], [2, 3, 0, 1])
    with pytest.raises(AssertionError, match=r"part at token 1 \(\[3\] and \[4\]\)"):
        agreement.check_same_until_a_near_tie([1], [2, 3, 4], [2, 4, 0])
    with pytest.raises(AssertionError, match=r"part at token 2 \(\[\] and \[0\]\)"):
        agreement.check_same_until_a_near_tie([1, 2], [3, 4], [3, 4, 0])  # stopped where 0 was clear
    with pytest.raises(AssertionError, match="nothing was compared"):
        agreement.assert_few_skipped()


def test_teacher_forced_predictions_must_be_the_argmax_or_a_near_tie():
    agreement = GreedyAgreement(reference, tolerance=0.05)
    agreement.check_predictions([1, 2, 3], [2, 3, 4])
    agreement.check_predictions([1, 2, 3], [2, 3, 0])  # after 3: either side of the tie
    assert (agreement.checked, agreement.skipped) == (4, 2)
    with pytest.raises(AssertionError, match="position 1 predicts 4, the reference's argmax is 3"):
        agreement.check_predictions([1, 2], [2, 4])
    with pytest.raises(AssertionError, match="1 predictions for 2 positions"):
        agreement.check_predictions([1, 2], [2])
