"""The request search's query string, read by shared/operations/request_search.py (the function only calls it)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from shared.core.errors import InvalidInput
from shared.operations.request_search import RequestFilter, SearchQuery, parse_search_query


def test_a_full_query_becomes_the_filter_the_page_size_and_the_cursor():
    query = parse_search_query([("q", "  Alice "), ("status", "failed"), ("actor", "desk"),
                                ("from", "2026-01-02T03:04:05"), ("limit", "500"), ("cursor", "abc.def")])
    assert query == SearchQuery(RequestFilter(q="Alice", status="failed", actor="desk",
                                              since=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)),
                                limit=500, cursor="abc.def")


def test_no_parameters_is_the_first_page_of_fifty_unfiltered():
    assert parse_search_query([]) == SearchQuery(RequestFilter(), limit=50, cursor=None)
    assert parse_search_query([("cursor", "")]).cursor is None


def test_unknown_and_repeated_parameters_are_each_named():
    with pytest.raises(InvalidInput) as caught:
        parse_search_query([("status", "failed"), ("status", "created"), ("sort", "asc"), ("q", "a")])
    assert caught.value.details == [{"field": "sort", "message": "unknown"},
                                    {"field": "status", "message": "given more than once"}]


@pytest.mark.parametrize("limit", ["0", "501", "²", "1e3", "-1", "", "00001", " 5"])
def test_a_limit_outside_1_to_500_in_ascii_digits_is_refused(limit):
    with pytest.raises(InvalidInput) as caught:
        parse_search_query([("limit", limit)])
    assert caught.value.details == [{"field": "limit", "message": "1-500"}]


def test_a_bad_filter_field_is_named():
    with pytest.raises(InvalidInput) as caught:
        parse_search_query([("from", "2026-02-01"), ("to", "2026-01-01")])
    assert caught.value.details == [{"field": "from", "message": "must not be after 'to'"}]
