import numpy as np
import pytest

from vlselect.errors import SelectionError
from vlselect.select import parse_budgets, resolve_budget, stable_order


def test_fraction_budget_floors_like_the_official_scripts():
    b = resolve_budget(0.2, 665298)
    assert (b.count, b.fraction, b.given_as_fraction) == (133059, 0.2, True)


def test_count_budget_and_list():
    bs = parse_budgets("0.1,300", 1000)
    assert [b.count for b in bs] == [100, 300]
    assert bs[1].label == "n300" and bs[0].label == "frac0.1"


@pytest.mark.parametrize("bad", ["0", "1.5", "-3", "abc", "2000"])
def test_bad_budgets_raise(bad):
    with pytest.raises(SelectionError):
        resolve_budget(bad, 1000)


def test_stable_order_breaks_ties_by_index_and_puts_nan_last():
    assert stable_order(np.array([1.0, 3.0, 3.0, np.nan, 0.0])).tolist() == [1, 2, 0, 4, 3]
    assert stable_order(np.array([1.0, 3.0, 3.0, np.nan, 0.0]), descending=False).tolist() == [4, 0, 1, 2, 3]
