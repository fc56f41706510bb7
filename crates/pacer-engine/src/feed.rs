//! Test data while a run goes (the plan's `data:`, [`pacer_plan::data`]): each iteration takes
//! one row of every source its scenario uses before its first request, so all its requests
//! see the same row (`{{data.NAME.COLUMN}}`).
//!
//! A process takes its shard's rows only: for `unique`, its block
//! ([`pacer_plan::data::DataSource::share`], the same pure function on every worker), taken
//! in order, each once; for `cycle`, all
//! rows in order, round and round; for `random`, a row drawn for each iteration. When a
//! `unique` source has no row left the run stops starting iterations and says why
//! ([`DataExhausted`]): a test that needs more rows than it was given has not run as planned.

use std::ops::Range;
use std::sync::Arc;

use pacer_plan::data::{DataMode, Table};
use pacer_plan::{Plan, Shard};
use rand::Rng;
use serde_json::Value;

/// A `unique` source ran out of rows: the run stopped starting iterations.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "test data `{name}` ran out: all {rows} rows this process was given (unique mode) are used, so the run stopped starting iterations; give more rows or fewer iterations"
)]
pub struct DataExhausted {
    /// The source's name (`data.NAME`).
    pub name: String,
    /// How many rows this process had.
    pub rows: u64,
}

/// A source's rows could not be given to the run.
#[derive(Debug, thiserror::Error)]
#[error("data.{name}: {why}")]
pub struct DataMissing {
    name: String,
    why: &'static str,
}

/// One source as the run takes its rows.
struct Feeder {
    mode: DataMode,
    table: Arc<Table>,
    /// This process's rows of the table.
    rows: Range<usize>,
}

/// Every source of the plan, and which each scenario takes a row of.
pub(crate) struct Feeders {
    names: Vec<String>,
    feeders: Vec<Feeder>,
    /// By scenario: indices into `feeders`.
    by_scenario: Vec<Vec<usize>>,
    /// Rows taken so far of each source (`unique`, `cycle`).
    next: parking_lot::Mutex<Vec<u64>>,
}

/// The rows one iteration took: by source index, `None` for a source its scenario does not use.
pub(crate) type Taken = Vec<Option<usize>>;

impl Feeders {
    /// The plan's sources as `shard` takes them. A source without rows is an error (a
    /// LoadTest's plan whose rows were never attached).
    pub(crate) fn new(plan: &Plan, shard: &Shard) -> Result<Self, DataMissing> {
        let mut feeders = Vec::with_capacity(plan.data.len());
        for d in &plan.data {
            let Some(table) = d.table.clone() else {
                return Err(DataMissing {
                    name: d.name.clone(),
                    why: "no rows were given to this process (a LoadTest's rows come from the ConfigMap its spec.data names)",
                });
            };
            feeders.push(Feeder {
                mode: d.mode,
                rows: d.share(plan, shard),
                table,
            });
        }
        let by_scenario = (0..plan.scenarios.len())
            .map(|s| {
                let used = pacer_plan::data::scenario_sources(plan, s);
                plan.data
                    .iter()
                    .enumerate()
                    .filter(|(_, d)| used.contains(&d.name.as_str()))
                    .map(|(i, _)| i)
                    .collect()
            })
            .collect();
        Ok(Self {
            next: parking_lot::Mutex::new(vec![0; feeders.len()]),
            names: plan.data.iter().map(|d| d.name.clone()).collect(),
            feeders,
            by_scenario,
        })
    }

    /// The rows of one iteration of scenario `sc`, or the source that ran out. All or nothing:
    /// when one `unique` source has no row left, no other source's row is taken (it would be
    /// skipped), so the cursors move together under one lock, held for a few comparisons.
    pub(crate) fn take(&self, sc: usize) -> Result<Taken, DataExhausted> {
        let mut taken = vec![None; self.feeders.len()];
        let Some(used) = self.by_scenario.get(sc) else {
            return Ok(taken);
        };
        let mut next = self.next.lock();
        for &i in used {
            let f = &self.feeders[i];
            let len = f.rows.len() as u64;
            if len == 0 || (f.mode == DataMode::Unique && next[i] >= len) {
                return Err(DataExhausted {
                    name: self.names[i].clone(),
                    rows: len,
                });
            }
        }
        for &i in used {
            let f = &self.feeders[i];
            let len = f.rows.len() as u64;
            let k = match f.mode {
                DataMode::Unique => next[i],
                DataMode::Cycle => next[i] % len,
                DataMode::Random => rand::rng().random_range(0..len),
            };
            next[i] = next[i].saturating_add(1);
            taken[i] = Some(f.rows.start + k as usize);
        }
        Ok(taken)
    }

    /// The value of `column` in the row `taken` holds of `source`.
    pub(crate) fn value<'a>(
        &'a self,
        taken: &[Option<usize>],
        source: &str,
        column: &str,
    ) -> Option<&'a Value> {
        let i = self.names.iter().position(|n| n == source)?;
        let row = (*taken.get(i)?)?;
        let t = &self.feeders[i].table;
        t.rows.get(row)?.get(t.column(column)?)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

    use super::*;

    fn plan(mode: &str) -> Plan {
        let yaml = format!(
            "name: t\ntarget: http://127.0.0.1:9\ndata:\n  days: {{ file: d.csv, mode: {mode} }}\nscenarios:\n  - {{ name: a, executor: shared-iterations, vus: 2, iterations: 4, requests: [{{ name: r, path: \"/{{{{data.days.from}}}}\" }}] }}\n  - {{ name: b, executor: shared-iterations, vus: 1, iterations: 4, requests: [{{ name: r, path: / }}] }}\n"
        );
        let mut p = pacer_plan::load_str(
            &yaml,
            "plan.yaml",
            &pacer_plan::Refs::Remote {
                provided: &|_| None,
            },
        )
        .unwrap();
        pacer_plan::data::attach(&mut p, vec![("days".into(), "from\nx\ny\nz\n".into())]).unwrap();
        p
    }

    fn rows(f: &Feeders, n: usize) -> Vec<Option<usize>> {
        (0..n)
            .map(|_| f.take(0).map(|t| t[0]).unwrap_or(None))
            .collect()
    }

    #[test]
    fn each_mode_takes_its_rows() {
        let p = plan("unique");
        let f = Feeders::new(&p, &Shard::whole()).unwrap();
        assert_eq!(rows(&f, 3), [Some(0), Some(1), Some(2)]);
        let e = f.take(0).unwrap_err();
        assert_eq!((e.name.as_str(), e.rows), ("days", 3));
        assert!(e.to_string().contains("ran out"), "{e}");
        // A scenario that uses no source takes nothing.
        assert_eq!(f.take(1).unwrap(), [None]);
        let t = vec![Some(1)];
        assert_eq!(f.value(&t, "days", "from"), Some(&Value::from("y")));
        assert_eq!(f.value(&t, "days", "to"), None);

        let f = Feeders::new(&plan("cycle"), &Shard::whole()).unwrap();
        assert_eq!(rows(&f, 5), [Some(0), Some(1), Some(2), Some(0), Some(1)]);

        let f = Feeders::new(&plan("random"), &Shard::whole()).unwrap();
        assert!(rows(&f, 50).iter().all(|r| r.is_some_and(|r| r < 3)));
    }

    #[test]
    fn a_worker_takes_its_block_of_unique_rows() {
        let p = plan("unique");
        let f = Feeders::new(&p, &Shard::equal(1, 2).unwrap()).unwrap();
        // 3 rows over 2 workers with 2 iterations each of scenario a: rows 0-1 and 2.
        assert_eq!(rows(&f, 2), [Some(2), None]);
    }

    /// Two unique sources, one with fewer rows: when it runs out, the other's next row is
    /// not taken (so not skipped).
    #[test]
    fn a_source_running_out_takes_no_row_of_another() {
        let yaml = "name: t\ntarget: http://127.0.0.1:9\ndata:\n  a: { file: a.csv, mode: unique }\n  b: { file: b.csv, mode: unique }\nscenarios:\n  - { name: s, executor: shared-iterations, vus: 1, iterations: 4, requests: [{ name: r, path: \"/{{data.a.x}}/{{data.b.x}}\" }] }\n";
        let mut p = pacer_plan::load_str(
            yaml,
            "plan.yaml",
            &pacer_plan::Refs::Remote {
                provided: &|_| None,
            },
        )
        .unwrap();
        pacer_plan::data::attach(
            &mut p,
            vec![
                ("a".into(), "x\n1\n2\n3\n".into()),
                ("b".into(), "x\n1\n".into()),
            ],
        )
        .unwrap();
        let f = Feeders::new(&p, &Shard::whole()).unwrap();
        assert_eq!(f.take(0).unwrap(), [Some(0), Some(0)]);
        assert_eq!(f.take(0).unwrap_err().name, "b");
        assert_eq!(*f.next.lock(), [1, 1], "a's second row is still there");
    }

    #[test]
    fn rows_never_attached_are_an_error() {
        let mut p = plan("cycle");
        p.data[0].table = None;
        let e = Feeders::new(&p, &Shard::whole()).err().unwrap();
        assert!(e.to_string().starts_with("data.days: no rows"), "{e}");
    }
}
