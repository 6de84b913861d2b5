//! The filter's typing and oracle, range normalization and limits.

use super::*;

fn schema() -> Schema {
    Schema::from([
        ("year".into(), ValueType::Integer),
        ("score".into(), ValueType::Float),
        ("lang".into(), ValueType::String),
        ("draft".into(), ValueType::Boolean),
        ("at".into(), ValueType::Timestamp),
        ("tags".into(), ValueType::StringList),
    ])
}

fn doc() -> Metadata {
    Metadata::from([
        ("year".into(), Value::Int(2021)),
        ("score".into(), Value::Float(0.5)),
        ("lang".into(), Value::Str("en".into())),
        (
            "at".into(),
            Value::Time(parse_time("2024-01-02T00:00:00Z").unwrap()),
        ),
        (
            "tags".into(),
            Value::List(vec!["rust".into(), "search".into()]),
        ),
    ])
}

fn check(text: &str, expected: bool) {
    let f = parse(text).unwrap().resolve(&schema()).unwrap();
    assert_eq!(f.matches(&doc()), expected, "{text}: {f:?}");
}

#[test]
fn the_oracle_follows_the_types() {
    check(
        "year >= 2020 AND lang IN [\"en\", \"de\"] AND NOT draft = true",
        true,
    );
    check("year > 2021", false);
    check("year > 2020.5", true);
    check("year < 2021.5 AND year <= 2021", true);
    check("score >= 1", false);
    check(
        "at >= \"2024-01-01T00:00:00Z\" AND at < \"2024-01-03T00:00:00+00:00\"",
        true,
    );
    check("tags CONTAINS \"rust\"", true);
    check("tags CONTAINS ANY [\"go\", \"search\"]", true);
    check("tags = \"go\"", false);
    check("draft EXISTS", false);
    check("NOT draft EXISTS", true);
    check("missing = 3 OR lang != \"fr\"", true);
    check("unknown_key = \"x\"", false);
    check("NOT unknown_key = \"x\"", true);
}

#[test]
fn a_range_keeps_one_bound_per_side_the_tighter() {
    let resolve = |key: &str, gt, gte, lt, lte| {
        let f = Filter::cond(key, Test::Range(Range { gt, gte, lt, lte }));
        match f.resolve(&schema()).unwrap() {
            Filter::Cond(Condition {
                test: Test::Range(r),
                ..
            }) => r,
            f => panic!("{f:?}"),
        }
    };
    let (f, i) = (Value::Float, Value::Int);
    // The inclusive bound is tighter on both sides.
    let r = resolve(
        "score",
        Some(f(-2.5)),
        Some(i(-1)),
        Some(f(3.0)),
        Some(i(2)),
    );
    assert_eq!(
        r,
        Range {
            gte: Some(f(-1.0)),
            lte: Some(f(2.0)),
            ..Default::default()
        }
    );
    // The strict bound is tighter, and at equal values the strict one wins.
    let r = resolve(
        "score",
        Some(f(1.0)),
        Some(f(1.0)),
        Some(f(0.5)),
        Some(f(2.0)),
    );
    assert_eq!(
        r,
        Range {
            gt: Some(f(1.0)),
            lt: Some(f(0.5)),
            ..Default::default()
        }
    );
    // A fractional bound on an integer becomes inclusive and then competes as one.
    let r = resolve(
        "year",
        Some(i(2020)),
        Some(f(2019.5)),
        None,
        Some(f(2030.5)),
    );
    assert_eq!(
        r,
        Range {
            gt: Some(i(2020)),
            lte: Some(i(2030)),
            ..Default::default()
        }
    );
    let r = resolve(
        "year",
        Some(f(2020.5)),
        Some(i(2020)),
        Some(i(2030)),
        Some(i(2030)),
    );
    assert_eq!(
        r,
        Range {
            gte: Some(i(2021)),
            lt: Some(i(2030)),
            ..Default::default()
        }
    );
}

#[test]
fn a_condition_of_the_wrong_type_names_the_key_and_both_types() {
    let e = parse("year = \"2020\"")
        .unwrap()
        .resolve(&schema())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("\"year\" is an integer") && e.contains("gives a string"),
        "{e}"
    );
    assert!(parse("lang > 3").unwrap().resolve(&schema()).is_err());
    assert!(parse("at > \"soon\"").unwrap().resolve(&schema()).is_err());
}

#[test]
fn limits_count_depth_and_terms() {
    let limits = FilterLimits {
        max_depth: 3,
        max_terms: 4,
    };
    parse("a = 1 AND (b = 2 OR c = 3)")
        .unwrap()
        .check_limits(limits)
        .unwrap();
    assert!(parse("NOT (NOT (NOT a = 1))")
        .unwrap()
        .check_limits(limits)
        .is_err());
    assert!(parse("a IN [1,2,3,4,5]")
        .unwrap()
        .check_limits(limits)
        .is_err());
}
