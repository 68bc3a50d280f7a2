"""Property test: whatever a params file says, the series statement keeps its allowed shape.

Hypothesis drives names, dimensions and metric expressions (plain ones and ones carrying
quotes, semicolons, backticks, comments, spaces, keywords) through the config loader and the
query builder. Either the config is refused with an error naming the bad value, or every part
of the statement is accounted for: quoted names are the configured ones, literals are the
configured metric and grouping names, placeholders are the four bound values, and every bare
word is a keyword or an allowed function of the template.
"""

from __future__ import annotations

import re

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from anomaly.config import params_from_dict
from anomaly.errors import AnomalyError
from anomaly.queries import series_sql
from anomaly.sql import AGGREGATES

NASTY = [
    "a'b", 'a"b', "a;b", "a`b", "a--b", "a/*b*/", "a b", "drop table x", "x); DROP TABLE t; --",
    "é", "", "1abc", "a\nb", "SELECT", "a.b", "`x`", "a#b", "{x:String}",
]  # fmt: skip
plain = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,12}", fullmatch=True)
# Mostly plain names, so that many configs pass and their statements get checked.
name = st.sampled_from([False] * 9 + [True]).flatmap(
    lambda bad: st.one_of(st.sampled_from(NASTY), st.text(max_size=8)) if bad else plain
)


@st.composite
def expression(draw: st.DrawFn, names: st.SearchStrategy[str]) -> str:
    function = draw(st.sampled_from([*AGGREGATES, "toString", "sleep", "arrayJoin"]))
    column = draw(names)
    params = draw(st.sampled_from(["(0.5)", "(1)", "(0.9); DROP", "(x)"]))
    well_formed = ["{f}({c})"] * 8 + ["{f}{p}({c})"] * 4 + ["{f}()"] * 2
    template = draw(st.sampled_from([*well_formed, "{c}", "{f}({c}) + 1", "{f}({c}, {c})"]))
    return template.format(f=function, p=params, c=column)


@st.composite
def config(draw: st.DrawFn, names: st.SearchStrategy[str] = name) -> dict:
    columns = draw(st.lists(names, min_size=1, max_size=3))
    dimensions = draw(
        st.lists(st.one_of(st.sampled_from(columns), st.builds("+".join, st.lists(
            st.sampled_from(columns), min_size=2, max_size=2))), max_size=3)
    )  # fmt: skip
    metrics = draw(st.dictionaries(names, expression(names), min_size=1, max_size=3))
    return {
        "clickhouse": {"database": draw(names)},
        "dataset": {"kind": "nab", "path": "unused"},
        "customers": [{
            "name": draw(names), "table": draw(names), "time_column": draw(names),
            "customer_column": draw(st.one_of(st.none(), names)), "dimensions": dimensions,
            "metrics": metrics,
        }],
    }  # fmt: skip


PLACEHOLDERS = {"{customer:String}", "{start:DateTime('UTC')}", "{end:DateTime('UTC')}",
                "{min_size:UInt64}"}  # fmt: skip
KEYWORDS = {
    "SELECT", "FROM", "WHERE", "AND", "OR", "AS", "GROUP", "BY", "GROUPING", "SETS", "HAVING",
    "ARRAY", "JOIN", "ORDER", "minute", "grouping", "dimension_values", "group_size", "point",
    "metric", "value", "series_key", "set_mask", "is_all", "toStartOfMinute", "multiIf",
    "concat", "toString", "count", "toFloat64", "cityHash64",
}  # fmt: skip
TOKENS = re.compile(
    r"(?P<quoted>`[^`]*`)|(?P<literal>'[^']*')|(?P<placeholder>\{[^}]*\})"
    r"|(?P<word>[A-Za-z_][A-Za-z0-9_]*)|(?P<number>\d+(?:\.\d+)?)"
    r"|(?P<symbol>>=|<=|[()\[\],.=<>])|(?P<space>\s+)|(?P<other>.)"
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(config())
def test_every_statement_built_from_any_config_keeps_its_shape(raw: dict) -> None:
    try:
        params = params_from_dict(raw)
    except AnomalyError as err:
        assert str(err)  # refused, with a message
        return
    assert_allowed_shape(params)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(config(plain))
def test_statements_from_plain_names_keep_their_shape(raw: dict) -> None:
    try:
        params = params_from_dict(raw)
    except AnomalyError as err:
        assert str(err)  # e.g. a dimension repeating a column, or a malformed call
        return
    assert_allowed_shape(params)


def assert_allowed_shape(params) -> None:
    customer = params.customers[0]
    sql = series_sql(customer, params.clickhouse.database)

    names = {params.clickhouse.database, customer.table, customer.time_column,
             *customer.dimension_columns, *customer.metric_columns,
             *(f"m_{metric}" for metric in customer.metrics)}  # fmt: skip
    if customer.customer_column:
        names.add(customer.customer_column)
    groupings = {"+".join(g) if g else "all" for g in customer.groupings}
    literals = {*customer.metrics, *groupings, "|", "", "?"}
    functions = {a.function for a in customer.metrics.values()}

    for token in TOKENS.finditer(sql):
        kind, text = token.lastgroup, token.group()
        if kind == "quoted":
            assert text[1:-1] in names, text
        elif kind == "literal":
            assert text[1:-1] in literals, text
        elif kind == "placeholder":
            assert text in PLACEHOLDERS, text
        elif kind == "word":
            assert text in KEYWORDS or text in functions, text
        else:
            assert kind in ("number", "symbol", "space"), (kind, text)
    assert ";" not in sql and "--" not in sql and "/*" not in sql
