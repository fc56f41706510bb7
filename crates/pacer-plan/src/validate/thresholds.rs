//! `thresholds`: each metric key (with the scenario and request it names, which must exist)
//! and its expressions.

use std::collections::BTreeMap;
use std::time::Duration;

use super::Checker;
use super::scenarios::RequestNames;
use crate::HumanDuration;
use crate::spec::ThresholdSpec;
use crate::threshold::{self, Threshold};

pub(super) fn thresholds(
    c: &mut Checker,
    specs: &BTreeMap<String, Vec<ThresholdSpec>>,
    request_names: &RequestNames,
) -> Vec<Threshold> {
    let mut thresholds = Vec::new();
    for (key, list) in specs {
        let p = format!("thresholds.{key}");
        let (metric, tags) = match threshold::parse_metric_key(key) {
            Ok(x) => x,
            Err(e) => {
                c.err(&p, e);
                continue;
            }
        };
        if let Some(sc) = &tags.scenario
            && !request_names.contains_key(sc)
        {
            c.err(&p, format!("no scenario named {sc:?}"));
        }
        if let Some(rq) = &tags.request {
            let known = match &tags.scenario {
                Some(sc) => request_names.get(sc).is_some_and(|n| n.contains(rq)),
                None => request_names.values().any(|n| n.contains(rq)),
            };
            if !known {
                c.err(&p, format!("no request named {rq:?}"));
            }
        }
        if list.is_empty() {
            c.err(&p, "give at least one expression, e.g. [\"p(95)<800ms\"]");
        }
        for (j, t) in list.iter().enumerate() {
            let expr = t.expression();
            match threshold::parse_expr(metric, expr) {
                Ok((aggregation, op, value)) => {
                    let (abort_on_fail, delay) = match t {
                        ThresholdSpec::Expr(_) => (false, Duration::ZERO),
                        ThresholdSpec::Full(f) => (
                            f.abort_on_fail,
                            f.delay_abort_eval
                                .map_or(Duration::ZERO, HumanDuration::get),
                        ),
                    };
                    thresholds.push(Threshold {
                        key: key.clone(),
                        metric,
                        tags: tags.clone(),
                        expr: expr.to_string(),
                        aggregation,
                        op,
                        value,
                        abort_on_fail,
                        delay_abort_eval: delay,
                    });
                }
                Err(e) => c.err(format!("{p}[{j}]"), e),
            }
        }
    }
    thresholds
}
