//! `limits`: each client-side limit's name (unique), its rate, burst and window (and how they
//! fit its shape: [`crate::shape::check`]), and what it matches.

use std::collections::BTreeSet;

use super::{Checker, is_token};
use crate::HumanDuration;
use crate::model::Limit;
use crate::spec::LimitSpec;

pub(super) fn limits(c: &mut Checker, specs: &[LimitSpec]) -> Vec<Limit> {
    let mut limits = Vec::new();
    let mut names = BTreeSet::new();
    for (i, l) in specs.iter().enumerate() {
        let p = format!("limits[{i}]");
        c.name(&format!("{p}.name"), &l.name);
        if !names.insert(l.name.clone()) {
            c.err(
                format!("{p}.name"),
                format!("duplicate limit name {:?}", l.name),
            );
        }
        if l.limit.is_zero() {
            c.err(format!("{p}.limit"), "must be above zero");
        }
        let burst = l.burst.unwrap_or(1);
        if burst == 0 {
            c.err(format!("{p}.burst"), "must be at least 1");
        }
        crate::shape::check(l)
            .into_iter()
            .for_each(|(f, m)| c.err(format!("{p}.{f}"), m));
        let window = l.window.map_or(l.limit.per(), HumanDuration::get);
        if window.is_zero() {
            c.err(format!("{p}.window"), "must be above zero");
        }
        if let Some(problem) = l.reserve.and_then(|r| r.problem(l.limit.as_per_sec())) {
            c.err(format!("{p}.reserve"), problem);
        }
        let m = l.matches.clone().unwrap_or_default();
        for (j, meth) in m.method_in.iter().enumerate() {
            if !is_token(meth) {
                c.err(
                    format!("{p}.match.methodIn[{j}]"),
                    format!("{meth:?} is not an HTTP method"),
                );
            }
        }
        if let Some(pp) = &m.path_prefix
            && !pp.starts_with('/')
        {
            c.err(format!("{p}.match.pathPrefix"), "must start with `/`");
        }
        limits.push(Limit {
            name: l.name.clone(),
            limit: l.limit,
            shape: l.shape,
            burst,
            window,
            scope: l.scope,
            method_in: m.method_in.iter().map(|s| s.to_ascii_uppercase()).collect(),
            path_prefix: m.path_prefix.clone(),
            request_in: m.request_in.clone(),
            adaptive: l.adaptive,
            spread: l.spread.map(HumanDuration::get),
            reserve: l.reserve,
        });
    }
    limits
}
