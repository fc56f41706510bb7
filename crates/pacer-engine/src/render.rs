//! Rendering request templates for one request of one iteration.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;

use pacer_plan::{JsonTemplate, Part, Template};

use crate::feed::Feeders;
use rand::Rng;
use serde_json::Value;

/// What a template can refer to while an iteration runs.
#[derive(Clone, Copy)]
pub(crate) struct RenderCtx<'a> {
    /// Values extracted earlier in this iteration; they shadow `plan_vars`.
    pub(crate) vars: &'a HashMap<String, Value>,
    /// The plan's `variables`.
    pub(crate) plan_vars: &'a BTreeMap<String, Value>,
    pub(crate) iteration: u64,
    pub(crate) vu: u32,
    pub(crate) scenario: &'a str,
    pub(crate) worker: u32,
    /// The attempt of the logical request being rendered (`{{attempt}}`, 1-based).
    pub(crate) attempt: u32,
    /// The rows this iteration took (`{{data.NAME.COLUMN}}`); `None` in a context without
    /// data.
    pub(crate) data: Option<(&'a Feeders, &'a [Option<usize>])>,
}

/// A placeholder without a value.
#[derive(Debug, thiserror::Error)]
pub(crate) enum MissingVar {
    #[error(
        "{{{{vars.{0}}}}} is not set (not in `variables`, and no earlier request extracted it)"
    )]
    Var(String),
    #[error("{{{{data.{0}.{1}}}}} has no value (this iteration took no row of `{0}`)")]
    Data(String, String),
}

/// Now shifted by the offset. A validated plan's offset is at most a century
/// (`pacer_plan::bounds::MAX_TIME_OFFSET`); anything beyond the calendar saturates at its
/// ends instead of panicking in chrono's `+`.
fn iso_now(offset: std::time::Duration, negative: bool) -> String {
    let now = chrono::Utc::now();
    let off = chrono::Duration::from_std(offset).unwrap_or(chrono::Duration::MAX);
    let t = if negative {
        now.checked_sub_signed(off)
            .unwrap_or(chrono::DateTime::<chrono::Utc>::MIN_UTC)
    } else {
        now.checked_add_signed(off)
            .unwrap_or(chrono::DateTime::<chrono::Utc>::MAX_UTC)
    };
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn epoch_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl RenderCtx<'_> {
    fn var(&self, name: &str) -> Option<&Value> {
        self.vars.get(name).or_else(|| self.plan_vars.get(name))
    }

    fn data_value(&self, source: &str, column: &str) -> Result<&Value, MissingVar> {
        self.data
            .and_then(|(feeders, taken)| feeders.value(taken, source, column))
            .ok_or_else(|| MissingVar::Data(source.to_string(), column.to_string()))
    }

    pub(crate) fn render(&self, t: &Template) -> Result<String, MissingVar> {
        let mut out = String::new();
        self.render_into(t, &mut out)?;
        Ok(out)
    }

    pub(crate) fn render_into(&self, t: &Template, out: &mut String) -> Result<(), MissingVar> {
        for p in t.parts() {
            match p {
                Part::Lit(s) => out.push_str(s),
                Part::Var(name) => match self.var(name) {
                    Some(Value::String(s)) => out.push_str(s),
                    Some(v) => {
                        let _ = write!(out, "{v}");
                    }
                    None => return Err(MissingVar::Var(name.clone())),
                },
                Part::Data { source, column } => match self.data_value(source, column)? {
                    Value::String(s) => out.push_str(s),
                    v => {
                        let _ = write!(out, "{v}");
                    }
                },
                other => {
                    let _ = match self.scalar(other) {
                        Value::String(s) => write!(out, "{s}"),
                        v => write!(out, "{v}"),
                    };
                }
            }
        }
        Ok(())
    }

    /// The value of a non-literal, non-variable placeholder.
    fn scalar(&self, p: &Part) -> Value {
        match p {
            Part::Uuid => Value::String(uuid::Uuid::new_v4().to_string()),
            Part::RandInt(lo, hi) => Value::from(rand::rng().random_range(*lo..=*hi)),
            Part::IsoNow { offset, negative } => Value::String(iso_now(*offset, *negative)),
            Part::EpochMs => Value::from(epoch_ms()),
            Part::Iteration => Value::from(self.iteration),
            Part::Vu => Value::from(self.vu),
            Part::Scenario => Value::String(self.scenario.to_string()),
            Part::Worker => Value::from(self.worker),
            Part::Attempt => Value::from(self.attempt),
            Part::Lit(s) => Value::String(s.clone()),
            Part::Var(v) => self.var(v).cloned().unwrap_or(Value::Null),
            Part::Data { source, column } => self
                .data_value(source, column)
                .cloned()
                .unwrap_or(Value::Null),
        }
    }

    /// Render a JSON body. A string that is exactly one placeholder keeps the placeholder's
    /// type (`"{{randInt 1 10}}"` becomes a number, `"{{vars.filter}}"` the variable's JSON).
    pub(crate) fn render_json(&self, t: &JsonTemplate) -> Result<Value, MissingVar> {
        Ok(match t {
            JsonTemplate::Literal(v) => v.clone(),
            JsonTemplate::String(tpl) => match tpl.parts() {
                [Part::Var(name)] => self
                    .var(name)
                    .cloned()
                    .ok_or_else(|| MissingVar::Var(name.clone()))?,
                [Part::Data { source, column }] => self.data_value(source, column)?.clone(),
                [single] if !matches!(single, Part::Lit(_)) => self.scalar(single),
                _ => Value::String(self.render(tpl)?),
            },
            JsonTemplate::Array(items) => Value::Array(
                items
                    .iter()
                    .map(|i| self.render_json(i))
                    .collect::<Result<_, _>>()?,
            ),
            JsonTemplate::Object(fields) => {
                let mut m = serde_json::Map::with_capacity(fields.len());
                for (k, v) in fields {
                    m.insert(k.clone(), self.render_json(v)?);
                }
                Value::Object(m)
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_text_and_typed_json() {
        let mut vars = HashMap::new();
        vars.insert("pageSize".to_string(), Value::from(25));
        vars.insert("name".to_string(), Value::from("x"));
        let plan_vars = BTreeMap::new();
        let ctx = RenderCtx {
            vars: &vars,
            plan_vars: &plan_vars,
            iteration: 7,
            vu: 2,
            scenario: "s",
            worker: 1,
            attempt: 2,
            data: None,
        };
        let t =
            Template::parse("/p/{{vars.name}}/{{iteration}}/{{vu}}/{{worker}}?n={{vars.pageSize}}")
                .unwrap();
        assert_eq!(ctx.render(&t).unwrap(), "/p/x/7/2/1?n=25");
        let t = Template::parse("try {{attempt}}").unwrap();
        assert!(t.uses_attempt());
        assert_eq!(ctx.render(&t).unwrap(), "try 2");
        let j = JsonTemplate::Object(vec![
            (
                "size".into(),
                JsonTemplate::String(Template::parse("{{vars.pageSize}}").unwrap()),
            ),
            (
                "n".into(),
                JsonTemplate::String(Template::parse("{{randInt 3 3}}").unwrap()),
            ),
            (
                "s".into(),
                JsonTemplate::String(Template::parse("it-{{iteration}}").unwrap()),
            ),
        ]);
        let v = ctx.render_json(&j).unwrap();
        assert_eq!(v, serde_json::json!({"size": 25, "n": 3, "s": "it-7"}));
        let iso = ctx
            .render(&Template::parse("{{isoNow -1h}}").unwrap())
            .unwrap();
        assert!(iso.ends_with('Z') && iso.len() == 24, "{iso}");
        assert!(
            ctx.render(&Template::parse("{{vars.nope}}").unwrap())
                .is_err()
        );
    }

    #[test]
    fn offsets_beyond_the_calendar_saturate() {
        let far = std::time::Duration::from_secs(u64::MAX);
        assert!(iso_now(far, false).starts_with('+'));
        assert!(iso_now(far, true).starts_with('-'));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

        /// Any template the plan parser accepts renders without a panic, whatever its
        /// numbers (randInt bounds, isoNow offsets) and text.
        #[test]
        fn any_parsed_template_renders(
            lit in "[a-z/{}$ ]{0,8}",
            lo in proptest::num::i64::ANY,
            hi in proptest::num::i64::ANY,
            off in proptest::num::u64::ANY,
            unit in proptest::sample::select(vec!["ns", "ms", "s", "m", "h", "d", "y"]),
            sign in proptest::sample::select(vec!["", "+", "-"]),
        ) {
            let vars = HashMap::new();
            let plan_vars = BTreeMap::new();
            let ctx = RenderCtx {
                vars: &vars,
                plan_vars: &plan_vars,
                iteration: u64::MAX,
                vu: u32::MAX,
                scenario: "s",
                worker: u32::MAX,
                attempt: u32::MAX,
                data: None,
            };
            let (lo, hi) = (lo.min(hi), lo.max(hi));
            let src = format!(
                "{lit}{{{{randInt {lo} {hi}}}}}{{{{isoNow {sign}{off}{unit}}}}}{{{{uuid}}}}{{{{epochMs}}}}{{{{iteration}}}}{lit}"
            );
            if let Ok(t) = Template::parse(&src) {
                proptest::prop_assert!(ctx.render(&t).is_ok());
            }
        }
    }
}
