//! A JMeter test plan to a pacer plan.
//!
//! | JMeter | pacer |
//! |---|---|
//! | Thread Group (threads, ramp-up, loops, scheduler) | a scenario: `per-vu-iterations`, `constant-vus` or `ramping-vus` |
//! | Constant / Precise Throughput Timer | `constant-arrival-rate` at the samples' rate over the samplers in its scope |
//! | HTTP Request | a request (method, path, query, form or raw body, JSON as `json`) |
//! | HTTP Request Defaults | the plan's `target` and default parameters |
//! | HTTP Header Manager | the headers of every request in its scope |
//! | User Defined Variables, `${var}`, `${__P(name,default)}` | `variables`, `{{vars.NAME}}`, `${env:NAME:-default}` |
//! | CSV Data Set Config (file, variable names, delimiter, ignore first line, recycle, stop thread) | a `data:` source (`columns`, `delimiter`, `skipFirstLine`, `mode`); its variables `{{data.SOURCE.COLUMN}}` |
//! | Response Assertion (response code), JSON Assertion | `expect.status`, `expect.json` |
//! | JSON Extractor, Regular Expression Extractor (headers) | `extract` |
//! | Transaction Controller | request names prefixed with the transaction's |
//! | Constant / Uniform / Gaussian Random Timer | `thinkTime` (their sum per iteration) |
//!
//! Anything else is a [`Note`]: a comment in the plan where it was, and an entry of the list.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde_json::Value;

use crate::jmx::{Element, Props};
use crate::text::{self, Converted};
use crate::yaml::{self, Item, Map, Node};
use crate::{Import, ImportError, Note, NoteKind};

/// What the import needs besides the file.
#[derive(Clone, Debug)]
pub struct Options {
    /// Names the file in the plan's header and in errors.
    pub source_name: String,
    /// How long a thread group that loops for ever (no scheduler) runs: JMeter would run it
    /// until stopped, a plan needs an end.
    pub forever_duration: Duration,
}

/// A minute: the default for [`Options::forever_duration`].
pub const DEFAULT_FOREVER_DURATION: Duration = Duration::from_secs(60);

impl Default for Options {
    fn default() -> Self {
        Self {
            source_name: "test.jmx".into(),
            forever_duration: DEFAULT_FOREVER_DURATION,
        }
    }
}

/// Import a JMX document.
pub fn import(text: &str, options: &Options) -> Result<Import, ImportError> {
    let plan = crate::jmx::parse(text)?;
    let mut cx = Cx::new(options);
    let doc = cx.plan(&plan)?;
    let mut header = vec![
        format!(
            "Imported by `pacer import jmeter` from the JMeter test plan {:?} ({}).",
            plan.name, options.source_name
        ),
        "Comments starting with \"pacer import:\" mark what was approximated or not translated."
            .to_string(),
    ];
    if !cx.top.is_empty() {
        header.push(String::new());
        header.append(&mut cx.top);
    }
    let yaml = yaml::write(&header, &doc);
    crate::validate(&yaml, &options.source_name)?;
    Ok(Import {
        yaml,
        notes: cx.notes,
        data_files: cx.data_files,
    })
}

/// The origin requests go to: `http://host:port`.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Origin {
    scheme: String,
    host: String,
    port: u16,
}

impl Origin {
    fn url(&self) -> String {
        format!("{}://{}:{}", self.scheme, self.host, self.port)
    }
}

/// HTTP Request Defaults in scope.
#[derive(Clone, Debug, Default)]
struct Defaults {
    domain: String,
    port: String,
    protocol: String,
    path: String,
    args: Vec<Arg>,
}

#[derive(Clone, Debug)]
struct Arg {
    name: String,
    value: String,
    encode: bool,
}

/// What applies to the samplers under an element: JMeter's scoping rules (config elements,
/// assertions, post-processors and timers apply to every sampler below their parent).
#[derive(Clone, Debug, Default)]
struct Scope {
    headers: Vec<(String, String)>,
    defaults: Option<Defaults>,
    status: Option<Vec<u16>>,
    json_checks: Vec<Value>,
    extract: Vec<(String, Value)>,
    /// Timer pause before each sampler, in ms.
    pause_ms: u64,
    transaction: Option<String>,
    /// Variables a CSV Data Set in scope sets: the variable's name (as `text::convert` writes
    /// it) to its `{{data.SOURCE.COLUMN}}`.
    data_vars: BTreeMap<String, String>,
}

/// A throughput timer's rate in samples per period, over the samplers in its scope.
#[derive(Clone, Copy, Debug)]
struct Throughput {
    /// Samples per `period_s`, in thousandths (JMeter's throughput is a decimal).
    milli_samples: u64,
    period_s: u64,
    /// JMeter's "this thread only": the rate is per thread.
    per_thread: bool,
    /// Samplers the timer applies to: an iteration runs each once.
    samplers: u64,
}

/// The import in progress.
struct Cx<'o> {
    options: &'o Options,
    notes: Vec<Note>,
    /// Comment lines for the place being built (plan, scenario, request).
    sinks: Vec<Vec<String>>,
    /// Comment lines for the top of the document.
    top: Vec<String>,
    variables: BTreeMap<String, (Value, Option<String>)>,
    /// The `data:` sources, from CSV Data Sets, and their names.
    data: Map,
    data_names: BTreeSet<String>,
    /// Each source's `file`, as written, in order: what `pacer run` will read beside the plan.
    data_files: Vec<String>,
    /// Variables templates read.
    used: BTreeSet<String>,
    /// Variables an extractor sets.
    extracted: BTreeSet<String>,
    target: Option<Origin>,
    allow_hosts: BTreeSet<String>,
    /// Requests written so far (bounded by MAX_REQUESTS).
    requests: usize,
}

/// "Test Plan / Thread Group / Login".
fn at(loc: &str, e: &Element) -> String {
    if loc.is_empty() {
        e.name.clone()
    } else {
        format!("{loc} / {}", e.name)
    }
}

impl<'o> Cx<'o> {
    fn new(options: &'o Options) -> Self {
        Self {
            options,
            notes: Vec::new(),
            sinks: Vec::new(),
            top: Vec::new(),
            variables: BTreeMap::new(),
            data: Map::new(),
            data_names: BTreeSet::new(),
            data_files: Vec::new(),
            used: BTreeSet::new(),
            extracted: BTreeSet::new(),
            target: None,
            allow_hosts: BTreeSet::new(),
            requests: 0,
        }
    }

    fn note(&mut self, kind: NoteKind, location: &str, element: &str, message: impl Into<String>) {
        let message = message.into();
        // Once per element type and message (a header manager's secret, met by every sampler
        // in its scope, is one note).
        if self
            .notes
            .iter()
            .any(|n| n.kind == kind && n.element == element && n.message == message)
        {
            return;
        }
        let line = format!(
            "pacer import: {}: <{element}> {location}: {message}",
            kind.label()
        );
        match self.sinks.last_mut() {
            Some(s) => s.push(line),
            None => self.top.push(line),
        }
        self.notes.push(Note {
            kind,
            location: location.to_string(),
            element: element.to_string(),
            message,
        });
    }

    fn comment(&mut self, line: String) {
        match self.sinks.last_mut() {
            Some(s) => s.push(line),
            None => self.top.push(line),
        }
    }

    fn invalid(e: &Element, field: &str, message: impl std::fmt::Display) -> ImportError {
        ImportError::Element {
            element: format!("{} testname={:?}", e.class, e.name),
            message: format!("{field}: {message}"),
        }
    }

    /// A JMeter string as a template, recording the variables and properties it reads; the
    /// variables of a CSV Data Set in scope (`data`) read its row. `None` (with a note) when
    /// it cannot be a template.
    fn template(
        &mut self,
        raw: &str,
        data: &BTreeMap<String, String>,
        loc: &str,
        element: &str,
        what: &str,
    ) -> Option<String> {
        let mut c: Converted = text::convert(raw);
        // `{{vars.NAME}}` can only be the conversion's own (literal `{{` is refused below), so
        // replacing it is exact; a property's variable of the same name is left alone.
        c.vars.retain(|v| match data.get(v) {
            Some(row) if !c.props.iter().any(|p| &p.var == v) => {
                c.text = c.text.replace(&format!("{{{{vars.{v}}}}}"), row);
                false
            }
            _ => true,
        });
        if c.has_braces {
            self.note(
                NoteKind::Untranslated,
                loc,
                element,
                format!("{what} contains `{{{{`, which pacer reads as a template placeholder (no escape exists): left out"),
            );
            return None;
        }
        for f in &c.unsupported {
            self.note(
                NoteKind::Untranslated,
                loc,
                element,
                format!(
                    "{what}: the JMeter function {f} has no template equivalent: sent as written"
                ),
            );
        }
        for p in &c.props {
            self.property(p);
        }
        self.used.extend(c.vars.iter().cloned());
        if pacer_plan::Template::parse(&c.text).is_err() {
            self.note(
                NoteKind::Untranslated,
                loc,
                element,
                format!("{what} is not a valid template once converted: left out"),
            );
            return None;
        }
        Some(c.text)
    }

    /// `${__P(name,default)}`: a variable read from the environment variable `name`, as
    /// JMeter's `-Jname=value` sets the property.
    fn property(&mut self, p: &text::Property) {
        if self.variables.contains_key(&p.var) {
            return;
        }
        let env_ok = !p.name.is_empty()
            && p.name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
            && !p.default.contains(['$', '{', '}']);
        let (value, comment) = if env_ok {
            (
                format!("${{env:{}:-{}}}", p.name, p.default),
                format!(
                    "JMeter property `-J{}`: set the environment variable {} to change it",
                    p.name, p.name
                ),
            )
        } else {
            (
                text::escape_literal(&p.default),
                format!("JMeter property {:?} (its default)", p.name),
            )
        };
        self.variables
            .insert(p.var.clone(), (Value::String(value), Some(comment)));
    }

    /// A number field (threads, loops, seconds): a literal, a property's default or a
    /// user-defined variable's value.
    fn number(&mut self, e: &Element, field: &str, loc: &str) -> Result<Option<u64>, ImportError> {
        let raw = e.props.str(field).trim().to_string();
        if raw.is_empty() {
            return Ok(None);
        }
        if let Ok(n) = raw.parse::<i64>() {
            return Ok(u64::try_from(n).ok());
        }
        let c = text::convert(&raw);
        let literal = match (c.props.as_slice(), c.vars.as_slice()) {
            ([p], [_]) if c.text == format!("{{{{vars.{}}}}}", p.var) => Some(p.default.clone()),
            ([], [v]) if c.text == format!("{{{{vars.{v}}}}}") => match self.variables.get(v) {
                Some((Value::String(s), _)) => Some(s.clone()),
                Some((Value::Number(n), _)) => Some(n.to_string()),
                _ => None,
            },
            _ => None,
        };
        let Some(value) = literal.filter(|s| !s.contains("${")) else {
            return Err(Self::invalid(
                e,
                field,
                format!(
                    "{raw:?} is not a number (nor a property or variable with a numeric value)"
                ),
            ));
        };
        let n: i64 = value
            .trim()
            .parse()
            .map_err(|_| Self::invalid(e, field, format!("{raw:?} = {value:?} is not a number")))?;
        self.note(
            NoteKind::Approximated,
            loc,
            &e.class,
            format!(
                "{field} is {raw}: imported as its value {n} (a number in the plan, not a variable)"
            ),
        );
        Ok(u64::try_from(n).ok())
    }

    fn plan(&mut self, plan: &Element) -> Result<Map, ImportError> {
        let loc = plan.name.clone();
        if let Some(udv) = plan.props.element("TestPlan.user_defined_variables") {
            self.user_variables(udv);
        }
        if plan.props.bool("TestPlan.serialize_threadgroups") {
            self.note(
                NoteKind::Approximated,
                &loc,
                "TestPlan",
                "thread groups run one after another in JMeter: pacer starts every scenario at once (give them startTime to run in turn)",
            );
        }
        let scope = self.configure(&plan.children, &Scope::default(), &loc);
        let mut scenarios = Vec::new();
        let mut names = BTreeSet::new();
        for e in &plan.children {
            let eloc = at(&loc, e);
            match e.class.as_str() {
                "ThreadGroup" | "SetupThreadGroup" | "PostThreadGroup" if !e.enabled => self.note(
                    NoteKind::Disabled,
                    &eloc,
                    &e.class,
                    "disabled: not imported",
                ),
                "ThreadGroup" | "SetupThreadGroup" | "PostThreadGroup" => {
                    if let Some(s) =
                        self.thread_group(e, &scope, &eloc, &plan.children, &mut names)?
                    {
                        scenarios.push(s);
                    }
                }
                _ if is_config(e) => {}
                _ => self.other(e, &eloc),
            }
        }
        if scenarios.is_empty() {
            return Err(ImportError::Empty(
                "no enabled Thread Group with an HTTP Request sampler that could be translated"
                    .into(),
            ));
        }
        // Every variable a template reads is defined (an extracted one gets its value before
        // the extraction), so the plan validates whatever JMeter set it with.
        for v in self.used.clone() {
            if !self.variables.contains_key(&v) {
                self.variables.insert(
                    v.clone(),
                    (
                        Value::String(String::new()),
                        Some(if self.extracted.contains(&v) {
                            format!("${{{v}}} is extracted from a response: empty until then")
                        } else {
                            format!("${{{v}}} is never set by an element pacer imports (a script? a CSV file?): empty")
                        }),
                    ),
                );
            }
        }
        let mut doc = Map::new();
        doc.set("name", yaml_name(&plan.name, "imported-jmeter-plan"));
        let target = self.target.clone().unwrap_or(Origin {
            scheme: "http".into(),
            host: "127.0.0.1".into(),
            port: 8080,
        });
        doc.set("target", format!("${{env:PACER_TARGET:-{}}}", target.url()))
            .comment("The JMeter plan's server; PACER_TARGET overrides it.");
        if !self.variables.is_empty() {
            let mut vars = Map::new();
            for (k, (v, c)) in &self.variables {
                let e = vars.set(k, Node::Scalar(v.clone()));
                if let Some(c) = c {
                    e.comment(c);
                }
            }
            doc.set("variables", vars);
        }
        if !self.data.is_empty() {
            doc.set("data", self.data.clone());
        }
        if !self.allow_hosts.is_empty() {
            let mut http = Map::new();
            http.set(
                "allowHosts",
                self.allow_hosts
                    .iter()
                    .map(|h| Item::new(h.as_str()))
                    .collect::<Vec<_>>(),
            )
            .comment("Other servers the JMeter samplers call (sent without credentials).");
            doc.set("http", http);
        }
        doc.set("scenarios", scenarios);
        Ok(doc)
    }

    fn user_variables(&mut self, args: &Props) {
        for a in args.elements("Arguments.arguments") {
            let name = a.str("Argument.name").trim();
            if name.is_empty() {
                continue;
            }
            let raw = a.str("Argument.value");
            let c = text::convert(raw);
            let value = match c.props.as_slice() {
                [p] if c.text == format!("{{{{vars.{}}}}}", p.var) => {
                    self.property(p);
                    match self.variables.get(&p.var) {
                        Some((v, _)) => v.clone(),
                        None => Value::String(text::escape_literal(raw)),
                    }
                }
                _ => scalar(raw),
            };
            let comment = (c.text != text::escape_literal(raw)).then(|| {
                format!("JMeter value {raw:?}: expressions in variables are not evaluated")
            });
            self.variables
                .insert(text::var_name(name), (value, comment));
        }
    }

    /// The config elements, assertions, extractors and timers among `children`: a scope for
    /// the samplers below.
    fn configure(&mut self, children: &[Element], outer: &Scope, loc: &str) -> Scope {
        let mut s = outer.clone();
        for e in children {
            let eloc = at(loc, e);
            if !is_config(e) {
                continue;
            }
            if !e.enabled {
                self.note(
                    NoteKind::Disabled,
                    &eloc,
                    &e.class,
                    "disabled: not imported",
                );
                continue;
            }
            match e.class.as_str() {
                "Arguments" => self.user_variables(&e.props),
                "HeaderManager" => {
                    for h in e.props.elements("HeaderManager.headers") {
                        let name = h.str("Header.name").trim().to_string();
                        if name.is_empty() {
                            continue;
                        }
                        s.headers.retain(|(n, _)| !n.eq_ignore_ascii_case(&name));
                        s.headers.push((name, h.str("Header.value").to_string()));
                    }
                }
                "ConfigTestElement" if e.gui == "HttpDefaultsGui" => {
                    let p = &e.props;
                    s.defaults = Some(Defaults {
                        domain: p.str("HTTPSampler.domain").trim().into(),
                        port: p.str("HTTPSampler.port").trim().into(),
                        protocol: p.str("HTTPSampler.protocol").trim().into(),
                        path: p.str("HTTPSampler.path").trim().into(),
                        args: args(p),
                    });
                }
                "CSVDataSet" => self.csv(e, &eloc, &mut s),
                "ResponseAssertion" => self.response_assertion(e, &eloc, &mut s),
                "JSONPathAssertion" => self.json_assertion(e, &eloc, &mut s),
                "JSONPostProcessor" => self.json_extractor(e, &eloc, &mut s),
                "RegexExtractor" => self.regex_extractor(e, &eloc, &mut s),
                "ConstantTimer" | "UniformRandomTimer" | "GaussianRandomTimer" => {
                    let delay = e
                        .props
                        .str("ConstantTimer.delay")
                        .trim()
                        .parse::<u64>()
                        .unwrap_or(0);
                    let range = e
                        .props
                        .str("RandomTimer.range")
                        .trim()
                        .parse::<f64>()
                        .unwrap_or(0.0);
                    // The mean pause: a uniform timer adds range/2 on average, a gaussian 0.
                    let mean = if e.class == "UniformRandomTimer" {
                        delay.saturating_add((range.max(0.0) / 2.0) as u64)
                    } else {
                        delay
                    };
                    s.pause_ms = s.pause_ms.saturating_add(mean);
                    self.note(
                        NoteKind::Approximated,
                        &eloc,
                        &e.class,
                        format!("a {mean} ms pause before each sampler in scope: pacer pauses after the iteration (thinkTime), their sum"),
                    );
                }
                // Read by the thread group (arrival rate).
                "ConstantThroughputTimer" | "PreciseThroughputTimer" => {}
                _ => self.other(e, &eloc),
            }
        }
        s
    }

    /// A CSV Data Set Config: a `data:` source whose columns are its variables, which the
    /// samplers in its scope read as `{{data.SOURCE.COLUMN}}` (one row per iteration, as a
    /// JMeter thread reads one line per iteration). What pacer's CSV cannot read as JMeter
    /// does (an expression for the file, a separator of several characters) keeps the old
    /// placeholders, with a note.
    fn csv(&mut self, e: &Element, loc: &str, s: &mut Scope) {
        const ELEMENT: &str = "CSVDataSet";
        let p = &e.props;
        let file = p.str("filename").trim().to_string();
        // JMeter splits variableNames on commas whatever the delimiter (CSVDataSet.java).
        let names: Vec<String> = p
            .str("variableNames")
            .split(',')
            .map(|n| n.trim().to_string())
            .filter(|n| !n.is_empty())
            .collect();
        let raw_delimiter = p.str("delimiter");
        let delimiter = match raw_delimiter {
            "" => Some(','),
            JMETER_TAB => Some('\t'),
            d => pacer_plan::data::delimiter(d).ok(),
        };
        let why_not = if file.is_empty() {
            Some("it names no file".to_string())
        } else if file.contains("${") {
            Some(format!("its file name {file:?} is an expression"))
        } else if self.data.0.len() >= pacer_plan::data::MAX_DATA_SOURCES {
            Some(format!(
                "a plan has at most {} data sources",
                pacer_plan::data::MAX_DATA_SOURCES
            ))
        } else if names.len() > pacer_plan::data::MAX_DATA_COLUMNS {
            Some(format!(
                "{} variables, more than a source's {} columns",
                names.len(),
                pacer_plan::data::MAX_DATA_COLUMNS
            ))
        } else {
            None
        };
        let (Some(delimiter), None) = (delimiter, &why_not) else {
            let why = why_not.unwrap_or_else(|| {
                format!(
                    "its delimiter {raw_delimiter:?} is not one character pacer's CSV splits on"
                )
            });
            return self.csv_placeholders(&file, &names, loc, &why);
        };

        // The file as written; a Windows separator as pacer's.
        let written = file.replace('\\', "/");
        let absolute = written.starts_with('/') || written.as_bytes().get(1) == Some(&b':');
        let stem = written.rsplit('/').next().unwrap_or(&written);
        let stem = match stem.rsplit_once('.') {
            Some((s, _)) if !s.is_empty() => s,
            _ => stem,
        };
        let name = unique_data_name(data_name(stem), &mut self.data_names);

        // Said above `file:`, once the rest is known.
        let mut file_comments = Vec::new();
        if absolute {
            self.note(
                NoteKind::Approximated,
                loc,
                ELEMENT,
                format!("`data.{name}`: the file {file:?} is an absolute path: kept, so the plan runs only where that file is"),
            );
        } else {
            file_comments.push(format!(
                "JMeter reads {file} relative to the .jmx; pacer relative to this plan file: put it beside the plan (or change `file`)."
            ));
        }
        if names.is_empty() {
            file_comments.push(
                "Its first line names the columns, as in JMeter (variableNames is empty).".into(),
            );
        }
        if !p.bool("quotedData") {
            file_comments.push("JMeter reads quotes in this file as text (\"Allow quoted data\" is off); pacer reads RFC 4180 quoting: a field that starts with \" differs.".into());
        }
        let mut source = Map::new();
        let file_entry = source.set("file", written.as_str());
        for c in &file_comments {
            file_entry.comment(c);
        }
        if pacer_plan::data::DataFormat::of_file(&written)
            != Some(pacer_plan::data::DataFormat::Csv)
        {
            source.set("format", "csv");
        }

        let recycle = p
            .text("recycle")
            .is_none_or(|t| t.trim().eq_ignore_ascii_case("true"));
        let stop_thread = p.bool("stopThread");
        let share = p.str("shareMode").trim();
        let mode = if !recycle && stop_thread {
            "unique"
        } else {
            "cycle"
        };
        let mode_entry = source.set("mode", mode);
        if mode == "unique" {
            mode_entry.comment("Each line once (JMeter: recycle off, stop thread on EOF); when the rows run out pacer stops the test and fails it, so plan as many iterations as rows.");
        }
        if !recycle && !stop_thread {
            self.note(
                NoteKind::Approximated,
                loc,
                ELEMENT,
                format!("`data.{name}`: after the last line JMeter gives the variables the value <EOF>; pacer starts again from the first row (mode: cycle)"),
            );
        }
        if !(share.is_empty() || share == "shareMode.all") {
            let whose = match share {
                "shareMode.group" => "each thread group".to_string(),
                "shareMode.thread" => "each thread".to_string(),
                other => format!("the elements sharing {other:?}"),
            };
            self.note(
                NoteKind::Approximated,
                loc,
                ELEMENT,
                format!("`data.{name}`: JMeter gives {whose} its own place in the file; pacer's cursor is shared by the whole test (mode: {mode})"),
            );
        }

        if names.is_empty() {
            self.note(
                NoteKind::Untranslated,
                loc,
                ELEMENT,
                format!("`data.{name}`: variableNames is empty, so the file's first line names the variables, and the import reads no file: write {{{{data.{name}.COLUMN}}}} where the plan reads them"),
            );
        } else {
            let mut columns: Vec<String> = Vec::new();
            let mut taken = BTreeSet::new();
            for n in &names {
                let column = unique_data_name(data_name(n), &mut taken);
                s.data_vars
                    .insert(text::var_name(n), format!("{{{{data.{name}.{column}}}}}"));
                columns.push(column);
            }
            source.set(
                "columns",
                columns
                    .iter()
                    .map(|c| Item::new(c.as_str()))
                    .collect::<Vec<_>>(),
            );
            if p.bool("ignoreFirstLine") {
                source.set("skipFirstLine", Node::Scalar(Value::Bool(true)));
            }
        }
        if delimiter != ',' {
            source.set("delimiter", delimiter.to_string());
        }
        let encoding = p.str("fileEncoding").trim().to_ascii_lowercase();
        if !(encoding.is_empty() || encoding.replace('-', "") == "utf8") {
            self.note(
                NoteKind::Approximated,
                loc,
                ELEMENT,
                format!("`data.{name}`: the file is {encoding}; pacer reads data files as UTF-8 (convert it)"),
            );
        }
        self.data.set(&name, source);
        self.data_files.push(written);
    }

    /// A CSV Data Set pacer's `data:` cannot read: its variables are plan variables with one
    /// placeholder value each.
    fn csv_placeholders(&mut self, file: &str, names: &[String], loc: &str, why: &str) {
        for n in names {
            let var = text::var_name(n);
            self.variables.entry(var.clone()).or_insert((
                Value::String(format!("csv-{var}")),
                Some(format!(
                    "from {file:?} in JMeter (CSV Data Set Config): this value in every iteration"
                )),
            ));
        }
        self.note(
            NoteKind::Untranslated,
            loc,
            "CSVDataSet",
            format!(
                "{why}: the variables {} are plan variables with one placeholder value each: declare the file under `data:` and use {{{{data.NAME.COLUMN}}}} (docs/plan-format.md, \"Test data\")",
                names.join(", ")
            ),
        );
    }

    fn response_assertion(&mut self, e: &Element, loc: &str, s: &mut Scope) {
        let field = e.props.str("Assertion.test_field");
        let test_type: u32 = e
            .props
            .str("Assertion.test_type")
            .trim()
            .parse()
            .unwrap_or(0);
        // JMeter's bits: MATCH 1, CONTAINS 2, NOT 4, EQUALS 8, SUBSTRING 16, OR 32.
        const NOT: u32 = 4;
        const OR: u32 = 32;
        let strings = e.props.texts("Asserion.test_strings");
        let codes: Option<Vec<u16>> = strings
            .iter()
            .map(|t| {
                t.trim()
                    .parse::<u16>()
                    .ok()
                    .filter(|c| (100..=599).contains(c))
            })
            .collect();
        match codes {
            Some(codes)
                if field == "Assertion.response_code"
                    && test_type & NOT == 0
                    && !codes.is_empty()
                    && (codes.len() == 1 || test_type & OR != 0) =>
            {
                s.status = Some(codes);
            }
            _ => self.note(
                NoteKind::Untranslated,
                loc,
                &e.class,
                format!(
                    "only a response code equal to one of a list translates (expect.status); this asserts {} ({})",
                    if field.is_empty() { "the response" } else { field },
                    strings.join(" | ")
                ),
            ),
        }
    }

    fn json_assertion(&mut self, e: &Element, loc: &str, s: &mut Scope) {
        let p = &e.props;
        let Some(pointer) = json_pointer(p.str("JSON_PATH")) else {
            return self.note(
                NoteKind::Untranslated,
                loc,
                &e.class,
                format!("the JSON path {:?} has no JSON pointer equivalent (only $.a.b[0] paths translate)", p.str("JSON_PATH")),
            );
        };
        if p.bool("ISREGEX") && p.bool("JSONVALIDATION") || p.bool("EXPECT_NULL") {
            return self.note(
                NoteKind::Untranslated,
                loc,
                &e.class,
                "a regular expression or a null value: pacer checks equality or existence",
            );
        }
        let check = if p.bool("JSONVALIDATION") {
            if p.bool("INVERT") {
                return self.note(
                    NoteKind::Untranslated,
                    loc,
                    &e.class,
                    "an inverted value check: pacer checks equality or existence",
                );
            }
            // JMeter compares the value's text; pacer compares JSON values: `true`, `5` and
            // `"x"` are read as JSON, anything else is a string.
            let expected = p.str("EXPECTED_VALUE");
            let value = serde_json::from_str::<Value>(expected)
                .ok()
                .filter(|v| !v.is_object() && !v.is_array())
                .unwrap_or_else(|| Value::String(text::escape_literal(expected)));
            serde_json::json!({"pointer": pointer, "equals": value})
        } else {
            serde_json::json!({"pointer": pointer, "exists": !p.bool("INVERT")})
        };
        s.json_checks.push(check);
    }

    fn json_extractor(&mut self, e: &Element, loc: &str, s: &mut Scope) {
        let p = &e.props;
        let names: Vec<&str> = p
            .str("JSONPostProcessor.referenceNames")
            .split(';')
            .collect();
        let paths: Vec<&str> = p
            .str("JSONPostProcessor.jsonPathExprs")
            .split(';')
            .collect();
        let defaults: Vec<&str> = p
            .str("JSONPostProcessor.defaultValues")
            .split(';')
            .collect();
        let m = p.str("JSONPostProcessor.match_numbers").trim();
        if !(m.is_empty() || m == "1") {
            self.note(
                NoteKind::Approximated,
                loc,
                &e.class,
                format!(
                    "match number {m}: pacer extracts the value at the pointer (the first match)"
                ),
            );
        }
        for (i, name) in names.iter().enumerate() {
            let name = name.trim();
            if name.is_empty() {
                continue;
            }
            let path = paths.get(i).copied().unwrap_or("").trim();
            let Some(pointer) = json_pointer(path) else {
                self.note(
                    NoteKind::Untranslated,
                    loc,
                    &e.class,
                    format!("{name}: the JSON path {path:?} has no JSON pointer equivalent"),
                );
                continue;
            };
            let var = text::var_name(name);
            let default = defaults.get(i).copied().unwrap_or("").trim();
            let mut spec = serde_json::json!({ "json": pointer });
            if !default.is_empty() {
                spec["required"] = Value::Bool(false);
                self.variables.entry(var.clone()).or_insert((
                    scalar(default),
                    Some(format!("the default of the JSON Extractor {:?}", e.name)),
                ));
            }
            self.extracted.insert(var.clone());
            s.extract.push((var, spec));
        }
    }

    fn regex_extractor(&mut self, e: &Element, loc: &str, s: &mut Scope) {
        let p = &e.props;
        let name = text::var_name(p.str("RegexExtractor.refname"));
        let regex = p.str("RegexExtractor.regex");
        // `Location: (.+)` on the response headers is a header extraction.
        let header = (p.str("RegexExtractor.useHeaders") == "true")
            .then(|| regex.split_once(':'))
            .flatten()
            .filter(|(h, rest)| {
                !h.is_empty()
                    && h.chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
                    && matches!(
                        rest.trim_start_matches("\\s*")
                            .trim_start_matches("\\s+")
                            .trim(),
                        "(.*)" | "(.+)" | "(.*?)" | "(.+?)" | "(.*)$" | "(.+)$" | "([^\\r\\n]+)"
                    )
            })
            .map(|(h, _)| h.to_string());
        match header {
            Some(h) => {
                let default = p.str("RegexExtractor.default");
                let mut spec = serde_json::json!({ "header": h });
                if !default.is_empty() {
                    spec["required"] = Value::Bool(false);
                    self.variables
                        .entry(name.clone())
                        .or_insert((scalar(default), Some(format!("the default of the Regular Expression Extractor {:?}", e.name))));
                }
                self.extracted.insert(name.clone());
                s.extract.push((name, spec));
            }
            None => self.note(
                NoteKind::Untranslated,
                loc,
                &e.class,
                format!("pacer extracts a header or a JSON pointer, not a regular expression ({regex:?}): ${{{name}}} is not set"),
            ),
        }
    }

    /// An element the plan has nothing for.
    fn other(&mut self, e: &Element, loc: &str) {
        if !e.enabled {
            return self.note(NoteKind::Disabled, loc, &e.class, "disabled: not imported");
        }
        let why = match e.class.as_str() {
            "ResultCollector" | "Summariser" | "BackendListener" => {
                "a listener: pacer's summary, --summary-json and --report show the results"
            }
            "CookieManager" => {
                "pacer keeps no cookies between requests: extract a Set-Cookie header and send it if the API needs one"
            }
            "CacheManager" => "pacer has no HTTP cache: every request is sent",
            "DNSCacheManager" | "AuthManager" | "KeystoreConfig" => {
                "no equivalent: configure the plan's `http` and `auth` instead"
            }
            c if c.contains("JSR223") || c.contains("BeanShell") || c.contains("JDBC") => {
                "a script or a non-HTTP element: pacer runs no scripts"
            }
            _ => "no pacer equivalent",
        };
        self.note(NoteKind::Untranslated, loc, &e.class, why);
    }

    fn thread_group(
        &mut self,
        tg: &Element,
        outer: &Scope,
        loc: &str,
        plan_children: &[Element],
        names: &mut BTreeSet<String>,
    ) -> Result<Option<Item>, ImportError> {
        self.sinks.push(Vec::new());
        let threads = self
            .number(tg, "ThreadGroup.num_threads", loc)?
            .unwrap_or(1)
            .max(1);
        let ramp_s = self.number(tg, "ThreadGroup.ramp_time", loc)?.unwrap_or(0);
        let scheduler = tg.props.bool("ThreadGroup.scheduler");
        let duration_s = if scheduler {
            self.number(tg, "ThreadGroup.duration", loc)?
                .filter(|d| *d > 0)
        } else {
            None
        };
        let delay_s = if scheduler {
            self.number(tg, "ThreadGroup.delay", loc)?.unwrap_or(0)
        } else {
            0
        };
        let loops: Option<u64> = match tg.props.element("ThreadGroup.main_controller") {
            Some(lc)
                if lc.bool("LoopController.continue_forever")
                    && lc.str("LoopController.loops").trim() == "-1" =>
            {
                None
            }
            Some(lc) => {
                let fake = Element {
                    class: "LoopController".into(),
                    gui: String::new(),
                    name: tg.name.clone(),
                    enabled: true,
                    props: lc.clone(),
                    children: Vec::new(),
                };
                match self.number(&fake, "LoopController.loops", loc)? {
                    Some(0) => {
                        self.note(
                            NoteKind::Approximated,
                            loc,
                            &tg.class,
                            "0 loops (no iteration in JMeter): imported as 1",
                        );
                        Some(1)
                    }
                    Some(n) => Some(n),
                    // JMeter loops for ever on any negative count (the GUI writes -1).
                    None if lc.str("LoopController.loops").trim().starts_with('-') => None,
                    None => Some(1),
                }
            }
            None => Some(1),
        };
        if tg.class != "ThreadGroup" {
            self.note(
                NoteKind::Approximated,
                loc,
                &tg.class,
                "a setUp/tearDown thread group: pacer runs it as a scenario at the same time as the others",
            );
        }
        let on_error = tg.props.str("ThreadGroup.on_sample_error");
        if !on_error.is_empty() && on_error != "continue" {
            self.note(
                NoteKind::Untranslated,
                loc,
                &tg.class,
                format!("on sample error {on_error:?}: pacer continues (a failed required extraction ends the iteration)"),
            );
        }

        let scope = self.configure(&tg.children, outer, loc);
        let mut requests = Vec::new();
        let mut request_names = BTreeSet::new();
        self.walk(&tg.children, &scope, loc, &mut requests, &mut request_names);
        if requests.is_empty() {
            self.note(
                NoteKind::Untranslated,
                loc,
                &tg.class,
                "no HTTP Request sampler in it could be translated: no scenario",
            );
            let lines = self.sinks.pop().unwrap_or_default();
            self.top.extend(lines);
            return Ok(None);
        }
        let samplers = requests.len() as u64;
        let pause_ms = scope_pauses(&requests);
        strip_private(&mut requests);

        // A throughput timer makes it an open model: the iterations' arrival rate.
        let throughput = self
            .throughput(plan_children, samplers, loc)
            .or_else(|| self.throughput_in(tg, loc));
        let mut s = Map::new();
        s.set(
            "name",
            crate::unique(crate::plan_name(&tg.name, "thread-group"), names),
        );
        if delay_s > 0 {
            s.set("startTime", format!("{delay_s}s"));
        }
        match throughput {
            Some(t) => {
                let total = if t.per_thread {
                    t.milli_samples.saturating_mul(threads)
                } else {
                    t.milli_samples
                };
                // Iterations per period: each runs the timer's samplers once.
                let Some(rate) = rate_string(
                    total,
                    t.period_s
                        .saturating_mul(t.samplers.max(1))
                        .saturating_mul(1000),
                ) else {
                    return Err(Self::invalid(
                        tg,
                        "throughput",
                        "the throughput timer's rate is zero",
                    ));
                };
                s.set("executor", "constant-arrival-rate").comment(format!(
                    "A throughput timer: {rate} iterations ({} sampler(s) each), at most {threads} in flight (the threads).",
                    t.samplers
                ));
                let duration_ms = match (duration_s, loops) {
                    (Some(d), _) => d.saturating_mul(1000),
                    (None, Some(l)) => {
                        // As long as the threads' iterations take at that rate, floored to
                        // the millisecond so the count is exactly threads x loops.
                        let iterations = threads.saturating_mul(l) as u128;
                        let (count, per_ms) = rate_parts(&rate);
                        (iterations.saturating_mul(per_ms as u128) / count.max(1) as u128) as u64
                    }
                    (None, None) => self.forever(tg, loc),
                };
                s.set("rate", rate);
                s.set("duration", ms_string(duration_ms.max(1)));
                s.set("maxInFlight", threads);
                if ramp_s > 0 {
                    self.note(
                        NoteKind::Approximated,
                        loc,
                        &tg.class,
                        format!("ramp-up {ramp_s}s: the arrival rate starts at once"),
                    );
                }
                if pause_ms > 0 {
                    self.note(NoteKind::Untranslated, loc, &tg.class, "timers' pauses: the arrival rate sets the pace (no thinkTime in the open model)");
                }
            }
            None => {
                match (loops, duration_s) {
                    (Some(l), d) => {
                        s.set("executor", "per-vu-iterations")
                            .comment(format!("{threads} threads x {l} loops."));
                        s.set("vus", threads);
                        s.set("iterations", l);
                        if let Some(d) = d {
                            s.set("maxDuration", format!("{d}s"));
                        }
                        if ramp_s > 0 {
                            self.note(
                                NoteKind::Approximated,
                                loc,
                                &tg.class,
                                format!(
                                    "ramp-up {ramp_s}s: per-vu-iterations starts every VU at once"
                                ),
                            );
                        }
                    }
                    (None, d) => {
                        let d_ms = match d {
                            Some(d) => d.saturating_mul(1000),
                            None => self.forever(tg, loc),
                        };
                        let ramp_ms = ramp_s.saturating_mul(1000);
                        if ramp_ms == 0 {
                            s.set("executor", "constant-vus").comment(format!(
                                "{threads} threads looping until the scheduler's end."
                            ));
                            s.set("vus", threads);
                            s.set("duration", ms_string(d_ms));
                        } else {
                            s.set("executor", "ramping-vus").comment(format!(
                                "{threads} threads started over {ramp_s}s, looping until the scheduler's end."
                            ));
                            s.set("startVUs", 0u64);
                            let mut stages = vec![stage(threads, ramp_ms.min(d_ms))];
                            if d_ms > ramp_ms {
                                stages.push(stage(threads, d_ms - ramp_ms));
                            }
                            s.set("stages", stages);
                        }
                    }
                }
                if pause_ms > 0 {
                    s.set("thinkTime", ms_string(pause_ms));
                }
            }
        }
        s.set("requests", requests);
        let lines = self.sinks.pop().unwrap_or_default();
        let mut item = Item::new(s);
        item.comments = lines;
        Ok(Some(item))
    }

    /// The duration of a thread group that loops for ever.
    fn forever(&mut self, tg: &Element, loc: &str) -> u64 {
        let d = self.options.forever_duration;
        self.note(
            NoteKind::Approximated,
            loc,
            &tg.class,
            format!("loops for ever without a scheduler: the scenario runs {} (pacer import --duration)", ms_string(d.as_millis() as u64)),
        );
        d.as_millis() as u64
    }

    /// A throughput timer at the test plan's level (over this thread group's samplers).
    fn throughput(
        &mut self,
        plan_children: &[Element],
        samplers: u64,
        loc: &str,
    ) -> Option<Throughput> {
        let e = plan_children
            .iter()
            .find(|e| e.enabled && is_throughput(e))?;
        self.timer(e, samplers, loc)
    }

    /// The first throughput timer inside a thread group, over the samplers of its parent.
    fn throughput_in(&mut self, parent: &Element, loc: &str) -> Option<Throughput> {
        if let Some(e) = parent
            .children
            .iter()
            .find(|e| e.enabled && is_throughput(e))
        {
            let samplers = if is_sampler(parent) {
                1
            } else {
                count_samplers(&parent.children)
            };
            return self.timer(e, samplers.max(1), loc);
        }
        parent
            .children
            .iter()
            .filter(|c| c.enabled)
            .find_map(|c| self.throughput_in(c, &at(loc, c)))
    }

    fn timer(&mut self, e: &Element, samplers: u64, loc: &str) -> Option<Throughput> {
        let p = &e.props;
        let (throughput, period_s, per_thread) = if e.class == "ConstantThroughputTimer" {
            let mode = p.str("calcMode").trim().parse::<u32>().unwrap_or(0);
            let t = p.str("throughput").trim().parse::<f64>().ok();
            (t, 60, mode == 0)
        } else {
            let t = p.str("throughput").trim().parse::<f64>().ok();
            let period = p
                .str("throughputPeriod")
                .trim()
                .parse::<u64>()
                .unwrap_or(3600)
                .max(1);
            (t, period, false)
        };
        let milli = throughput
            .filter(|t| t.is_finite() && *t > 0.0 && *t < 1e12)
            .map(|t| (t * 1000.0).round() as u64)
            .filter(|m| *m > 0);
        let eloc = at(loc, e);
        match milli {
            Some(milli_samples) => {
                self.comment(format!(
                    "pacer import: <{}> {eloc}: {} samples per {period_s}s{} over {samplers} sampler(s)",
                    e.class,
                    milli_samples as f64 / 1000.0,
                    if per_thread { " per thread" } else { "" }
                ));
                Some(Throughput {
                    milli_samples,
                    period_s,
                    per_thread,
                    samplers,
                })
            }
            None => {
                self.note(
                    NoteKind::Untranslated,
                    &eloc,
                    &e.class,
                    format!(
                        "throughput {:?} is not a positive number",
                        p.str("throughput")
                    ),
                );
                None
            }
        }
    }

    /// Samplers and controllers, in order, into requests.
    fn walk(
        &mut self,
        children: &[Element],
        scope: &Scope,
        loc: &str,
        out: &mut Vec<Item>,
        names: &mut BTreeSet<String>,
    ) {
        for e in children {
            let eloc = at(loc, e);
            if is_config(e) {
                continue;
            }
            if !e.enabled {
                self.note(
                    NoteKind::Disabled,
                    &eloc,
                    &e.class,
                    "disabled: not imported",
                );
                continue;
            }
            match e.class.as_str() {
                "HTTPSamplerProxy" | "HTTPSampler" => {
                    if self.requests >= crate::MAX_REQUESTS {
                        self.note(
                            NoteKind::Untranslated,
                            &eloc,
                            &e.class,
                            format!("more than {} requests: left out", crate::MAX_REQUESTS),
                        );
                        continue;
                    }
                    self.sinks.push(Vec::new());
                    let inner = self.configure(&e.children, scope, &eloc);
                    for c in e.children.iter().filter(|c| !is_config(c)) {
                        self.other(c, &at(&eloc, c));
                    }
                    let req = self.request(e, &inner, &eloc, names);
                    let lines = self.sinks.pop().unwrap_or_default();
                    match req {
                        Some(mut m) => {
                            self.requests += 1;
                            if inner.pause_ms > 0 {
                                // Read back by scope_pauses; not a plan field.
                                m.set(PAUSE_KEY, inner.pause_ms);
                            }
                            let mut item = Item::new(m);
                            item.comments = lines;
                            out.push(item);
                        }
                        None => {
                            // Its notes go with the scenario.
                            for l in lines {
                                self.comment(l);
                            }
                        }
                    }
                }
                "GenericController" => {
                    let inner = self.configure(&e.children, scope, &eloc);
                    self.walk(&e.children, &inner, &eloc, out, names);
                }
                "TransactionController" => {
                    let mut inner = self.configure(&e.children, scope, &eloc);
                    let txn = crate::plan_name(&e.name, "transaction");
                    inner.transaction = Some(txn.clone());
                    self.note(
                        NoteKind::Approximated,
                        &eloc,
                        &e.class,
                        format!("pacer has no transaction metric: its requests are named \"{txn} - ...\" (filter them with the request tag)"),
                    );
                    self.walk(&e.children, &inner, &eloc, out, names);
                }
                "LoopController"
                | "IfController"
                | "WhileController"
                | "OnceOnlyController"
                | "RandomController"
                | "RandomOrderController"
                | "InterleaveControl"
                | "SwitchController"
                | "ForeachController"
                | "RunTime"
                | "ThroughputController"
                | "CriticalSectionController" => {
                    let what = match e.class.as_str() {
                        "LoopController" => format!("loops {}: its samplers run once per iteration", e.props.str("LoopController.loops")),
                        _ => "its condition or order is not translated: its samplers run once per iteration, in order".into(),
                    };
                    self.note(NoteKind::Approximated, &eloc, &e.class, what);
                    let inner = self.configure(&e.children, scope, &eloc);
                    self.walk(&e.children, &inner, &eloc, out, names);
                }
                _ => self.other(e, &eloc),
            }
        }
    }

    fn request(
        &mut self,
        e: &Element,
        scope: &Scope,
        loc: &str,
        names: &mut BTreeSet<String>,
    ) -> Option<Map> {
        let p = &e.props;
        let d = scope.defaults.clone().unwrap_or_default();
        let pick = |own: &str, def: &str| {
            if own.trim().is_empty() {
                def.to_string()
            } else {
                own.trim().to_string()
            }
        };
        let mut domain = pick(p.str("HTTPSampler.domain"), &d.domain);
        let mut port = pick(p.str("HTTPSampler.port"), &d.port);
        let mut protocol = pick(p.str("HTTPSampler.protocol"), &d.protocol).to_ascii_lowercase();
        let mut path = pick(p.str("HTTPSampler.path"), &d.path);
        let method = pick(p.str("HTTPSampler.method"), "GET").to_ascii_uppercase();

        // A full URL in the path names its own origin.
        if let Ok(u) = url::Url::parse(&path)
            && matches!(u.scheme(), "http" | "https")
        {
            protocol = u.scheme().to_string();
            domain = u.host_str().unwrap_or("").to_string();
            port = u.port().map(|p| p.to_string()).unwrap_or_default();
            path = match u.query() {
                Some(q) => format!("{}?{q}", u.path()),
                None => u.path().to_string(),
            };
        }
        let origin = self.origin(e, loc, &domain, &port, &protocol)?;
        let path_t = self.template(
            if path.is_empty() { "/" } else { &path },
            &scope.data_vars,
            loc,
            &e.class,
            "the path",
        )?;
        let path_t = if path_t.starts_with('/') {
            path_t
        } else {
            format!("/{path_t}")
        };
        let path_t = match &self.target {
            None => {
                self.target = Some(origin);
                path_t
            }
            Some(t) if *t == origin => path_t,
            Some(_) => {
                self.allow_hosts
                    .insert(format!("{}:{}", origin.host, origin.port));
                format!("{}{path_t}", origin.url())
            }
        };

        let base = crate::plan_name(&e.name, &format!("{method} {path}"));
        let name = match &scope.transaction {
            Some(t) => format!("{t} - {base}"),
            None => base,
        };
        let mut r = Map::new();
        r.set(
            "name",
            crate::unique(crate::plan_name(&name, "request"), names),
        );
        r.set("method", method.as_str());
        r.set("path", path_t);

        // Headers: outer scopes first, the sampler's own last (JMeter merges them so).
        let mut headers = Map::new();
        for (name, value) in &scope.headers {
            if crate::secret_header(name) && !value.contains("${") {
                let (var, env) = crate::secret_names(name);
                self.variables.entry(var.clone()).or_insert((
                    Value::String(format!("${{env:{env}:-}}")),
                    Some(format!("the {name} header of the JMeter plan is a credential: not copied; set {env}")),
                ));
                self.note(
                    NoteKind::Approximated,
                    loc,
                    "HeaderManager",
                    format!("{name}: its value is not copied into the plan; it is {{{{vars.{var}}}}}, from the environment variable {env}"),
                );
                headers.set(name, format!("{{{{vars.{var}}}}}"));
                self.used.insert(var);
            } else if let Some(t) = self.template(
                value,
                &scope.data_vars,
                loc,
                "HeaderManager",
                &format!("the header {name}"),
            ) {
                headers.set(name, t);
            }
        }

        let mut all_args = d.args.clone();
        all_args.extend(args(p));
        if p.get("HTTPsampler.Files").is_some() || p.element("HTTPsampler.Files").is_some() {
            let files = p
                .element("HTTPsampler.Files")
                .map(|f| f.elements("HTTPFileArgs.files").len())
                .unwrap_or(0);
            if files > 0 {
                self.note(
                    NoteKind::Untranslated,
                    loc,
                    &e.class,
                    "file uploads: pacer sends no files (put the content in a body)",
                );
            }
        }
        if p.bool("HTTPSampler.postBodyRaw") {
            let raw: String = all_args
                .first()
                .map(|a| a.value.clone())
                .unwrap_or_default();
            let json_type = headers
                .0
                .iter()
                .find(|h| h.key.eq_ignore_ascii_case("content-type"))
                .map(|h| matches!(&h.value, Node::Scalar(Value::String(v)) if v.to_ascii_lowercase().starts_with("application/json")));
            let body = self.template(&raw, &scope.data_vars, loc, &e.class, "the body")?;
            match json_body(&body).filter(|_| json_type != Some(false)) {
                Some(json) => {
                    headers
                        .0
                        .retain(|h| !h.key.eq_ignore_ascii_case("content-type"));
                    r.set("json", Node::from(json));
                }
                None => {
                    r.set("body", body);
                }
            }
        } else if !all_args.is_empty() {
            let form = matches!(method.as_str(), "POST" | "PUT" | "PATCH")
                || p.bool("HTTPSampler.DO_MULTIPART_POST");
            if form {
                let mut parts = Vec::new();
                for a in &all_args {
                    let n = self.template(
                        &a.name,
                        &scope.data_vars,
                        loc,
                        &e.class,
                        "a parameter name",
                    )?;
                    let v = self.template(
                        &a.value,
                        &scope.data_vars,
                        loc,
                        &e.class,
                        &format!("the parameter {}", a.name),
                    )?;
                    let enc = |s: &str| {
                        if a.encode && !s.contains("{{") {
                            url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
                        } else {
                            s.to_string()
                        }
                    };
                    parts.push(format!("{}={}", enc(&n), enc(&v)));
                }
                if p.bool("HTTPSampler.DO_MULTIPART_POST") {
                    self.note(
                        NoteKind::Approximated,
                        loc,
                        &e.class,
                        "multipart/form-data: sent as application/x-www-form-urlencoded",
                    );
                }
                r.set("body", parts.join("&"));
                if !headers
                    .0
                    .iter()
                    .any(|h| h.key.eq_ignore_ascii_case("content-type"))
                {
                    headers.set("Content-Type", "application/x-www-form-urlencoded");
                }
            } else {
                let mut query = Map::new();
                for a in &all_args {
                    if query.get(&a.name).is_some() {
                        self.note(NoteKind::Untranslated, loc, &e.class, format!("the parameter {} is repeated: pacer's query sends one value per name (the last)", a.name));
                    }
                    if let Some(v) = self.template(
                        &a.value,
                        &scope.data_vars,
                        loc,
                        &e.class,
                        &format!("the parameter {}", a.name),
                    ) {
                        query.set(&a.name, v);
                    }
                }
                if !query.is_empty() {
                    r.set("query", query);
                }
            }
        }
        if !headers.is_empty() {
            // After the body: the form's Content-Type is among them.
            let entry = r.set("headers", headers);
            entry.comments.clear();
        }
        let mut expect = Map::new();
        if let Some(codes) = &scope.status {
            expect.set(
                "status",
                codes
                    .iter()
                    .map(|c| Item::new(u64::from(*c)))
                    .collect::<Vec<_>>(),
            );
        }
        if !scope.json_checks.is_empty() {
            expect.set(
                "json",
                scope
                    .json_checks
                    .iter()
                    .cloned()
                    .map(Item::new)
                    .collect::<Vec<_>>(),
            );
        }
        if !expect.is_empty() {
            r.set("expect", expect);
        }
        if !scope.extract.is_empty() {
            let mut ex = Map::new();
            for (name, spec) in &scope.extract {
                ex.set(name, Node::from(spec.clone()));
            }
            r.set("extract", ex);
        }
        Some(r)
    }

    fn origin(
        &mut self,
        e: &Element,
        loc: &str,
        domain: &str,
        port: &str,
        protocol: &str,
    ) -> Option<Origin> {
        let resolve = |cx: &mut Self, raw: &str, what: &str| -> String {
            if !raw.contains("${") {
                return raw.to_string();
            }
            let c = text::convert(raw);
            let mut out = raw.to_string();
            for p in &c.props {
                out = out.replace(&format!("${{__P({},{})}}", p.name, p.default), &p.default);
                out = out.replace(&format!("${{__P({})}}", p.name), &p.default);
            }
            for v in &c.vars {
                if let Some((Value::String(s), _)) = cx.variables.get(v) {
                    out = out.replace(&format!("${{{v}}}"), s);
                }
            }
            cx.note(
                NoteKind::Approximated,
                loc,
                &e.class,
                format!("the {what} {raw:?} is an expression: the plan's target uses {out:?} (PACER_TARGET overrides it)"),
            );
            out
        };
        let scheme = match resolve(self, protocol, "protocol").as_str() {
            "" => None,
            s => Some(s.to_ascii_lowercase()),
        };
        let host = resolve(self, domain, "server name");
        let port_s = resolve(self, port, "port");
        let port: Option<u16> = port_s.trim().parse().ok();
        let scheme = scheme.unwrap_or_else(|| {
            if port == Some(443) {
                "https".into()
            } else {
                "http".into()
            }
        });
        if !matches!(scheme.as_str(), "http" | "https")
            || host.is_empty()
            || host.contains(['$', '{', '/', ' '])
        {
            if host.is_empty() && self.target.is_some() {
                return self.target.clone();
            }
            if host.is_empty() {
                self.note(NoteKind::Approximated, loc, &e.class, "no server name (here nor in HTTP Request Defaults): the target is 127.0.0.1:8080 (set PACER_TARGET)");
                return Some(Origin {
                    scheme: "http".into(),
                    host: "127.0.0.1".into(),
                    port: 8080,
                });
            }
            self.note(
                NoteKind::Untranslated,
                loc,
                &e.class,
                format!("the server {scheme}://{host} cannot be a pacer target: left out"),
            );
            return None;
        }
        let port = port.unwrap_or(if scheme == "https" { 443 } else { 80 });
        Some(Origin { scheme, host, port })
    }
}

/// JMeter's way of writing a tab as a CSV Data Set's delimiter: backslash, t.
const JMETER_TAB: &str = "\\t";

/// A data source or column name as the plan accepts it (`A-Z a-z 0-9 _ -`, at most
/// [`pacer_plan::data::MAX_DATA_NAME`] with room for [`unique_data_name`]'s suffix).
fn data_name(raw: &str) -> String {
    let ascii: String = text::var_name(raw)
        .chars()
        .map(|c| if c.is_ascii() { c } else { '_' })
        .take(pacer_plan::data::MAX_DATA_NAME - DATA_SUFFIX_ROOM)
        .collect();
    if ascii.is_empty() {
        "data".into()
    } else {
        ascii
    }
}

/// Room for `_N` (up to 9999) after a name [`data_name`] shortened.
const DATA_SUFFIX_ROOM: usize = 5;

/// `name`, or `name_2`, `name_3` ... so that it is not in `taken`; records it.
fn unique_data_name(name: String, taken: &mut BTreeSet<String>) -> String {
    crate::unique_by(name, taken, |name, n| format!("{name}_{n}"))
}

/// Not a plan field: each request's timer pause, summed into the scenario's thinkTime and
/// removed before the plan is written.
const PAUSE_KEY: &str = "__pause_ms";

fn scope_pauses(requests: &[Item]) -> u64 {
    let mut total = 0u64;
    for r in requests {
        if let Node::Map(m) = &r.value
            && let Some(Node::Scalar(Value::Number(n))) = m.get(PAUSE_KEY)
        {
            total = total.saturating_add(n.as_u64().unwrap_or(0));
        }
    }
    total
}

/// Remove the importer's own bookkeeping keys before writing.
fn strip_private(items: &mut [Item]) {
    for r in items {
        if let Node::Map(m) = &mut r.value {
            m.0.retain(|e| e.key != PAUSE_KEY);
        }
    }
}

fn stage(target: u64, ms: u64) -> Item {
    let mut m = Map::new();
    m.set("target", target);
    m.set("duration", ms_string(ms));
    Item::new(m)
}

/// Milliseconds as a plan duration (`90s`, `1500ms`).
fn ms_string(ms: u64) -> String {
    if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

/// `milli_count` thousandths of an event per `period_ms` milliseconds, as a plan rate: per
/// second, minute or hour when that is a whole number, else `N/<duration>` reduced.
fn rate_string(milli_count: u64, period_ms: u64) -> Option<String> {
    let per = u128::from(period_ms) * 1000;
    let count = u128::from(milli_count);
    if count == 0 || per == 0 {
        return None;
    }
    for (unit_ms, unit) in [(1000u128, "s"), (60_000, "min"), (3_600_000, "h")] {
        if (count * unit_ms) % per == 0 {
            return Some(format!("{}/{unit}", count * unit_ms / per));
        }
    }
    let g = gcd(count, per);
    let (count, per_ms) = (count / g, per / g);
    Some(format!(
        "{count}/{}",
        ms_string(u64::try_from(per_ms).ok()?)
    ))
}

/// (count, period in ms) of a rate written by [`rate_string`].
fn rate_parts(rate: &str) -> (u64, u64) {
    let (c, per) = rate.split_once('/').unwrap_or((rate, "s"));
    let count = c.parse().unwrap_or(1);
    let per_ms = match per {
        "s" => 1000,
        "min" => 60_000,
        "h" => 3_600_000,
        p => pacer_plan::duration::parse(p)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(1000),
    };
    (count, per_ms)
}

fn gcd(a: u128, b: u128) -> u128 {
    if b == 0 { a.max(1) } else { gcd(b, a % b) }
}

fn is_config(e: &Element) -> bool {
    matches!(
        e.class.as_str(),
        "Arguments"
            | "HeaderManager"
            | "ConfigTestElement"
            | "CSVDataSet"
            | "ResponseAssertion"
            | "JSONPathAssertion"
            | "JSONPostProcessor"
            | "RegexExtractor"
            | "ConstantTimer"
            | "UniformRandomTimer"
            | "GaussianRandomTimer"
            | "ConstantThroughputTimer"
            | "PreciseThroughputTimer"
            | "CookieManager"
            | "CacheManager"
            | "DNSCacheManager"
            | "AuthManager"
            | "KeystoreConfig"
            | "ResultCollector"
            | "Summariser"
            | "BackendListener"
            | "JSR223PreProcessor"
            | "JSR223PostProcessor"
            | "BeanShellPreProcessor"
            | "BeanShellPostProcessor"
            | "JSR223Assertion"
            | "BeanShellAssertion"
            | "JSR223Timer"
            | "XPathAssertion"
            | "XPath2Extractor"
            | "XPathExtractor"
            | "BoundaryExtractor"
            | "HtmlExtractor"
            | "DurationAssertion"
            | "SizeAssertion"
    ) || e.class.ends_with("Listener")
        || e.class.ends_with("Visualizer")
}

fn is_throughput(e: &Element) -> bool {
    matches!(
        e.class.as_str(),
        "ConstantThroughputTimer" | "PreciseThroughputTimer"
    )
}

fn is_sampler(e: &Element) -> bool {
    matches!(e.class.as_str(), "HTTPSamplerProxy" | "HTTPSampler")
}

fn count_samplers(children: &[Element]) -> u64 {
    children
        .iter()
        .filter(|e| e.enabled)
        .map(|e| {
            if is_sampler(e) {
                1
            } else {
                count_samplers(&e.children)
            }
        })
        .sum()
}

fn args(p: &Props) -> Vec<Arg> {
    p.element("HTTPsampler.Arguments")
        .map(|a| {
            a.elements("Arguments.arguments")
                .into_iter()
                .map(|x| Arg {
                    name: x.str("Argument.name").to_string(),
                    value: x.str("Argument.value").to_string(),
                    encode: x.bool("HTTPArgument.always_encode"),
                })
                .collect()
        })
        .unwrap_or_default()
}

/// A plan name, never empty.
fn yaml_name(raw: &str, fallback: &str) -> String {
    let n = crate::plan_name(raw, fallback);
    if n.is_empty() { fallback.into() } else { n }
}

/// A variable's value: a number when the text is exactly one (so `"{{vars.n}}"` in a JSON
/// body stays a number), else the text with `${` escaped.
fn scalar(raw: &str) -> Value {
    if let Ok(n) = raw.parse::<i64>()
        && n.to_string() == raw
    {
        return Value::from(n);
    }
    Value::String(text::escape_literal(raw))
}

/// A JSONPath of plain member names and indexes (`$.a.b[0]`, `$['a']`) as a JSON pointer.
pub fn json_pointer(path: &str) -> Option<String> {
    let rest = path.trim().strip_prefix('$')?;
    let mut out = String::new();
    let mut chars = rest.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '.' => {
                if chars.peek() == Some(&'.') {
                    return None;
                }
                let mut name = String::new();
                while let Some(&n) = chars.peek() {
                    if n == '.' || n == '[' {
                        break;
                    }
                    name.push(n);
                    chars.next();
                }
                if name.is_empty() || name.contains(['*', '?', '@', '(', ')']) {
                    return None;
                }
                out.push('/');
                out.push_str(&name.replace('~', "~0").replace('/', "~1"));
            }
            '[' => {
                let mut inner = String::new();
                for n in chars.by_ref() {
                    if n == ']' {
                        break;
                    }
                    inner.push(n);
                }
                let inner = inner.trim();
                let seg = if let Ok(i) = inner.parse::<u64>() {
                    i.to_string()
                } else if let Some(s) = inner
                    .strip_prefix('\'')
                    .and_then(|s| s.strip_suffix('\''))
                    .or_else(|| inner.strip_prefix('"').and_then(|s| s.strip_suffix('"')))
                {
                    s.replace('~', "~0").replace('/', "~1")
                } else {
                    return None;
                };
                out.push('/');
                out.push_str(&seg);
            }
            _ => return None,
        }
    }
    Some(out)
}

/// A raw body that is JSON once its placeholders outside strings are quoted (a string that is
/// exactly one placeholder keeps the variable's type in pacer's JSON bodies).
fn json_body(body: &str) -> Option<Value> {
    let t = body.trim();
    if !(t.starts_with('{') || t.starts_with('[')) {
        return None;
    }
    let mut out = String::with_capacity(t.len());
    let mut in_string = false;
    let mut escaped = false;
    let mut rest = t;
    while let Some(c) = rest.chars().next() {
        if !in_string && rest.starts_with("{{") {
            let end = rest.find("}}")? + 2;
            out.push('"');
            out.push_str(&rest[..end]);
            out.push('"');
            rest = &rest[end..];
            continue;
        }
        if in_string {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
        } else if c == '"' {
            in_string = true;
        }
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    let v: Value = serde_json::from_str(&out).ok()?;
    (v.is_object() || v.is_array()).then_some(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_paths_to_pointers() {
        assert_eq!(json_pointer("$.a.b[0]").as_deref(), Some("/a/b/0"));
        assert_eq!(json_pointer("$['x/y'].z").as_deref(), Some("/x~1y/z"));
        assert_eq!(json_pointer("$").as_deref(), Some(""));
        assert_eq!(json_pointer("$..a"), None);
        assert_eq!(json_pointer("$.a[*]"), None);
        assert_eq!(json_pointer("a.b"), None);
    }

    #[test]
    fn rates_are_reduced() {
        assert_eq!(rate_string(60_000, 60_000).as_deref(), Some("1/s"));
        assert_eq!(rate_string(120_000, 2 * 60_000).as_deref(), Some("1/s"));
        assert_eq!(rate_string(600_000, 60_000).as_deref(), Some("10/s"));
        assert_eq!(rate_string(30_000, 60_000).as_deref(), Some("30/min"));
        assert_eq!(rate_string(1_500, 60_000).as_deref(), Some("90/h"));
        assert_eq!(rate_string(7, 1000).as_deref(), Some("7/1000s"));
        assert_eq!(rate_string(0, 1), None);
        assert_eq!(rate_parts("1/40s"), (1, 40_000));
    }

    #[test]
    fn json_bodies_with_bare_placeholders() {
        assert_eq!(
            json_body(r#"{"n": {{vars.n}}, "s": "a{{uuid}}"}"#),
            Some(serde_json::json!({"n": "{{vars.n}}", "s": "a{{uuid}}"}))
        );
        assert_eq!(json_body("a=b"), None);
        assert_eq!(json_body("{oops"), None);
    }
}
