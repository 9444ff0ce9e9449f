"""REST schemas: budgets are validated by pydantic (422 entries), never a raw BudgetError."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from ragpress.services.protocol import AnswerRequestBody, CompressRequestBody


@pytest.mark.parametrize("budget", [{"ratio": 0}, {"ratio": 1.01}, {"tokens": 0}, {"threshold": -0.1},
                                    {"threshold": 2}, {}, {"ratio": 0.2, "tokens": 5}, {"ratio": float("nan")}])
def test_bad_budgets_are_validation_errors(budget):
    with pytest.raises(ValidationError):
        CompressRequestBody(query="q", passages=["t"], budget=budget)


def test_to_core_builds_ids_titles_code_and_budget():
    req = CompressRequestBody(query="q", passages=["plain", {"title": "T", "text": "titled"}, {"id": "x", "text": "y"}],
                              budget={"tokens": 12}).to_core()
    assert [p.id for p in req.passages] == ["p0", "p1", "x"] and req.passages[1].title == "T"
    assert req.budget.tokens == 12
    code = CompressRequestBody(instruction="finish it", code="def f(): pass", language="python").to_core()
    assert code.query == "finish it" and code.passages[0].id == "code" and code.budget is None
    assert code.passages[0].metadata == {"language": "python"}


def test_exactly_one_input_and_bounds():
    with pytest.raises(ValidationError):
        CompressRequestBody(query="q")
    with pytest.raises(ValidationError):
        CompressRequestBody(query="q", passages=["a"], code="b")
    with pytest.raises(ValidationError):
        AnswerRequestBody(query="q", k=1000)
    with pytest.raises(ValidationError):
        CompressRequestBody(query="q", passages=["\ud800"])
