//! Test data (feeders): the `data:` section of a plan. Each source is a CSV file (a header row
//! names the columns, or the plan's `columns:` do for a file without one, as JMeter's usually
//! are; any one-character `delimiter:`) or a JSON Lines file (one object a line, the same keys
//! on every line),
//! used from templates as `{{data.NAME.COLUMN}}`; an iteration takes one row of each source its
//! scenario uses, so every request of the iteration sees the same row.
//!
//! Where the rows come from depends on who wrote the plan, as for references ([`crate::Refs`]):
//! a plan of this machine's operator reads its files (relative to the plan file) when it is
//! loaded; a LoadTest's plan reads nothing, and its rows are attached by whoever holds them
//! ([`attach`]: the Kubernetes operator from ConfigMaps, a worker from its `Assign`).
//!
//! `unique` rows are split across a fleet like its iterations ([`DataSource::share`]): a pure
//! function of the plan and the shard, so no row is used twice and none is skipped, without
//! Redis. The controller sends each worker its rows (docs/distributed.md, "Test data").

use std::collections::BTreeMap;
use std::io::Read;
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::FieldError;
use crate::model::{Body, JsonTemplate, Plan, Request};
use crate::{Shard, Template};

/// The largest data file, and the most all of a plan's data may add up to. The controller
/// sends each worker its rows inside one `Assign` message, capped at 16 MiB
/// (`pacer_proto::MAX_MESSAGE_BYTES`) together with the plan, whose references alone may reach
/// 8 MiB (`refs::MAX_RESOLVED_BYTES`): 4 MiB of data leaves room for both. A Kubernetes
/// ConfigMap holds at most 1 MiB anyway.
pub const MAX_DATA_BYTES: u64 = 4 * 1024 * 1024;

/// The most rows one source may have. Each parsed cell costs a few dozen bytes of memory in
/// every process that holds it; with [`MAX_DATA_CELLS`] this keeps a table under ~100 MiB.
pub const MAX_DATA_ROWS: usize = 1_000_000;

/// The most columns one source may have: far above a real feeder's (user, id, dates), and a
/// bound on the per-row work of checking a JSON Lines object's keys.
pub const MAX_DATA_COLUMNS: usize = 256;

/// The most cells (rows × columns) of one source: what bounds its memory (see
/// [`MAX_DATA_ROWS`]).
pub const MAX_DATA_CELLS: usize = 2_000_000;

/// The most sources one plan may declare.
pub const MAX_DATA_SOURCES: usize = 32;

/// The longest source or column name.
pub const MAX_DATA_NAME: usize = 64;

/// How a source's rows are taken, one per iteration.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum DataMode {
    /// Each row once across the whole fleet, in file order; when the rows run out the test
    /// ends, failed, saying so.
    Unique,
    /// The rows in file order, again from the first after the last.
    #[default]
    Cycle,
    /// A row drawn at random (with replacement) for each iteration.
    Random,
}

/// How a data file is written.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum DataFormat {
    /// Comma-separated values (RFC 4180: `"` quotes, `""` a quote inside); the first row
    /// names the columns.
    Csv,
    /// JSON Lines: one JSON object a line, each with the same keys (the columns).
    Jsonl,
}

impl DataFormat {
    /// The format a file name says: `.csv`, `.jsonl` or `.ndjson`.
    pub fn of_file(file: &str) -> Option<Self> {
        let lower = file.to_ascii_lowercase();
        if lower.ends_with(".csv") {
            Some(DataFormat::Csv)
        } else if lower.ends_with(".jsonl") || lower.ends_with(".ndjson") {
            Some(DataFormat::Jsonl)
        } else {
            None
        }
    }
}

/// One source of test data as a plan writes it (`data.NAME`).
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DataSpec {
    /// The file, relative to the plan file. In a LoadTest the file comes from a ConfigMap
    /// (`spec.data`), never from the operator's disk.
    pub file: String,
    /// `unique`, `cycle` (the default) or `random`.
    #[serde(default)]
    pub mode: DataMode,
    /// `csv` or `jsonl`; by default from the file's extension.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<DataFormat>,
    /// CSV without a header row (as JMeter's files usually are): the columns' names, in
    /// order; every line of the file is then a row.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub columns: Option<Vec<String>>,
    /// With `columns`: skip the file's first line (a header the plan's `columns` replace;
    /// JMeter's `ignoreFirstLine`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub skip_first_line: bool,
    /// The CSV field separator: one character, `,` by default (`"\t"` in YAML is a tab).
    /// Quoting stays RFC 4180's, with this character in place of the comma.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delimiter: Option<String>,
    /// CSV columns whose values are not strings (`integer`, `number`, `boolean`): a
    /// placeholder that is a whole JSON value keeps the type (`pageNumber:
    /// "{{data.queries.page}}"` sends a number). JSON Lines values have their own types.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub types: BTreeMap<String, ColumnType>,
}

/// The type of a CSV column's values.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum ColumnType {
    String,
    /// A whole number (64-bit).
    Integer,
    /// Any JSON number.
    Number,
    /// `true` or `false`.
    Boolean,
}

impl ColumnType {
    /// The value of a CSV field of this type. The error does not repeat the field: a data
    /// file may hold test users' secrets, and errors reach logs and a LoadTest's status.
    fn value(self, field: String) -> Result<Value, String> {
        let bad = |what: &str| format!("the value is not {what}");
        Ok(match self {
            ColumnType::String => Value::String(field),
            ColumnType::Integer => {
                Value::from(field.trim().parse::<i64>().map_err(|_| bad("an integer"))?)
            }
            ColumnType::Number => {
                let n: f64 = field.trim().parse().map_err(|_| bad("a number"))?;
                serde_json::Number::from_f64(n)
                    .map(Value::Number)
                    .ok_or_else(|| bad("a finite number"))?
            }
            ColumnType::Boolean => match field.trim() {
                "true" => Value::Bool(true),
                "false" => Value::Bool(false),
                _ => return Err(bad("true or false")),
            },
        })
    }
}

/// A source's rows: the column names, and each row's values in column order (strings for
/// CSV, any JSON value for JSON Lines).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Table {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Value>>,
}

impl Table {
    /// The index of a column.
    pub fn column(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c == name)
    }
}

/// How a CSV file is laid out: where its column names come from, and what separates its
/// fields. The default is RFC 4180's: a header row, commas.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CsvLayout {
    /// The plan's names for the columns (`columns:`): no header row, every line a row.
    /// `None`: the first line names them.
    pub columns: Option<Vec<String>>,
    /// With `columns`: the first line is skipped (`skipFirstLine:`).
    pub skip_first_line: bool,
    /// The field separator (`delimiter:`).
    pub delimiter: char,
}

/// The separator when a plan names none: RFC 4180's.
pub const DEFAULT_DELIMITER: char = ',';

impl Default for CsvLayout {
    fn default() -> Self {
        Self {
            columns: None,
            skip_first_line: false,
            delimiter: DEFAULT_DELIMITER,
        }
    }
}

/// A validated source: its declaration, and its rows once attached.
#[derive(Clone, Debug)]
pub struct DataSource {
    pub name: String,
    pub file: String,
    pub mode: DataMode,
    pub format: DataFormat,
    /// The types of CSV columns that are not strings.
    pub types: BTreeMap<String, ColumnType>,
    /// A CSV file's column names and separator (the default for JSON Lines).
    pub layout: CsvLayout,
    /// `None` until [`attach`]ed (a LoadTest's plan as read by the operator or a worker).
    pub table: Option<Arc<Table>>,
    /// The file's text as attached: what a controller sends its workers (at most
    /// [`MAX_DATA_BYTES`] for all sources, whatever the parsed table would take as JSON).
    pub text: Option<Arc<str>>,
}

impl DataSource {
    /// The rows of this source a shard takes, by index into the whole table: all of them for
    /// `cycle` and `random`; for `unique`, a block in proportion to the iterations the shard
    /// runs of the scenarios that use the source (the shards' blocks, in index order, are
    /// consecutive and cover the table). When one of those scenarios has no planned
    /// iteration count (VU executors), the shards' weights decide.
    pub fn share(&self, plan: &Plan, shard: &Shard) -> Range<usize> {
        let len = self.table.as_ref().map_or(0, |t| t.rows.len());
        if self.mode != DataMode::Unique || shard.is_whole() {
            return 0..len;
        }
        let Ok(all) = Shard::all(shard.weights()) else {
            return 0..0;
        };
        let using: Vec<usize> = (0..plan.scenarios.len())
            .filter(|&s| scenario_sources(plan, s).contains(&self.name.as_str()))
            .collect();
        let planned: Option<Vec<u64>> = all
            .iter()
            .map(|sh| {
                using.iter().try_fold(0u64, |sum, &s| {
                    let n = sh.planned_iterations(&plan.scenarios[s].executor)?;
                    Some(sum.saturating_add(n))
                })
            })
            .collect();
        let weights = match planned {
            Some(p) if p.iter().any(|&n| n > 0) => p,
            _ => shard.weights().iter().map(|&w| u64::from(w)).collect(),
        };
        let parts = crate::shard::largest_remainder(len as u64, &weights);
        let i = shard.index() as usize;
        let start: u64 = parts[..i].iter().sum();
        start as usize..(start + parts[i]) as usize
    }
}

/// How many iterations take a row of `source` in a whole run: the sum over the scenarios that
/// use it of their planned iterations; `None` when one of them is a VU executor (its count
/// depends on response times).
pub fn iterations_taking(plan: &Plan, source: &str) -> Option<u64> {
    (0..plan.scenarios.len())
        .filter(|&s| scenario_sources(plan, s).contains(&source))
        .try_fold(0u64, |sum, s| {
            Some(sum.saturating_add(plan.scenarios[s].executor.planned_iterations()?))
        })
}

/// The `data:` section: names and formats checked, nothing read.
pub(crate) fn sources(
    errors: &mut Vec<FieldError>,
    spec: &BTreeMap<String, DataSpec>,
) -> Vec<DataSource> {
    if spec.len() > MAX_DATA_SOURCES {
        errors.push(FieldError::new(
            "data",
            format!("at most {MAX_DATA_SOURCES} sources, got {}", spec.len()),
        ));
    }
    let mut out = Vec::new();
    for (name, d) in spec {
        let p = format!("data.{name}");
        if let Err(e) = check_name(name) {
            errors.push(FieldError::new(&p, format!("the name {e}")));
        }
        if d.file.trim().is_empty() {
            errors.push(FieldError::new(format!("{p}.file"), "must not be empty"));
        }
        let format = match d.format.or_else(|| DataFormat::of_file(&d.file)) {
            Some(f) => f,
            None => {
                errors.push(FieldError::new(
                    format!("{p}.format"),
                    "the file name ends neither in .csv nor in .jsonl: say `format: csv` or `format: jsonl`",
                ));
                DataFormat::Csv
            }
        };
        if format == DataFormat::Jsonl && !d.types.is_empty() {
            errors.push(FieldError::new(
                format!("{p}.types"),
                "JSON Lines values have their own types: `types` is for CSV columns",
            ));
        }
        let layout = csv_layout(errors, &p, d, format);
        out.push(DataSource {
            name: name.clone(),
            file: d.file.clone(),
            mode: d.mode,
            format,
            types: d.types.clone(),
            layout,
            table: None,
            text: None,
        });
    }
    out
}

/// A source's `columns`, `skipFirstLine` and `delimiter`, checked: CSV only, the names as a
/// header's would be, one separator character that cannot be mistaken for quoting or a line
/// end. `types` must then name one of `columns`.
fn csv_layout(
    errors: &mut Vec<FieldError>,
    p: &str,
    d: &DataSpec,
    format: DataFormat,
) -> CsvLayout {
    if format == DataFormat::Jsonl {
        let jsonl = |field: &str| {
            FieldError::new(
                format!("{p}.{field}"),
                format!(
                    "`{field}` is for CSV files: a JSON Lines object names its own columns and needs no separator"
                ),
            )
        };
        if d.columns.is_some() {
            errors.push(jsonl("columns"));
        }
        if d.skip_first_line {
            errors.push(jsonl("skipFirstLine"));
        }
        if d.delimiter.is_some() {
            errors.push(jsonl("delimiter"));
        }
        return CsvLayout::default();
    }
    if d.skip_first_line && d.columns.is_none() {
        errors.push(FieldError::new(
            format!("{p}.skipFirstLine"),
            "only with `columns`: without them the first line is the header, never a row",
        ));
    }
    if let Some(columns) = &d.columns {
        if columns.is_empty() {
            errors.push(FieldError::new(
                format!("{p}.columns"),
                "name at least one column",
            ));
        }
        if columns.len() > MAX_DATA_COLUMNS {
            errors.push(FieldError::new(
                format!("{p}.columns"),
                format!("{} columns, at most {MAX_DATA_COLUMNS}", columns.len()),
            ));
        }
        for (i, c) in columns.iter().enumerate() {
            if let Err(e) = check_name(c) {
                errors.push(FieldError::new(
                    format!("{p}.columns[{i}]"),
                    format!("the name {e}"),
                ));
            } else if columns[..i].contains(c) {
                errors.push(FieldError::new(
                    format!("{p}.columns[{i}]"),
                    format!("`{c}` is named twice"),
                ));
            }
        }
        for name in d.types.keys() {
            if !columns.contains(name) {
                errors.push(FieldError::new(
                    format!("{p}.types.{name}"),
                    format!("not one of `columns` ({})", columns.join(", ")),
                ));
            }
        }
    }
    let delimiter = match d.delimiter.as_deref().map(delimiter) {
        None => DEFAULT_DELIMITER,
        Some(Ok(c)) => c,
        Some(Err(why)) => {
            errors.push(FieldError::new(format!("{p}.delimiter"), why));
            DEFAULT_DELIMITER
        }
    };
    CsvLayout {
        columns: d.columns.clone(),
        skip_first_line: d.skip_first_line,
        delimiter,
    }
}

/// A CSV `delimiter:` as the one character it must be: not `"` (it quotes fields) nor a line
/// break (it ends a row). The error says why, for the field's message (`pacer import` asks
/// too, before it writes a JMeter set's delimiter).
pub fn delimiter(raw: &str) -> Result<char, String> {
    let mut chars = raw.chars();
    match (chars.next(), chars.next()) {
        (Some('"'), None) => Err("`\"` quotes fields: it cannot also separate them".into()),
        (Some('\r' | '\n'), None) => {
            Err("a line break ends a row: it cannot separate fields".into())
        }
        (Some(c), None) => Ok(c),
        _ => Err(format!(
            "one character (`\"\\t\"` for a tab), got {}",
            raw.chars().count()
        )),
    }
}

/// Every `{{data.NAME.*}}` names a declared source, and one of its `columns` when the plan
/// names them (other columns are checked when the rows are [`attach`]ed).
pub(crate) fn check_refs(errors: &mut Vec<FieldError>, plan: &Plan) {
    for_each_ref(plan, |path, source, column| {
        let Some(d) = plan.data.iter().find(|d| d.name == source) else {
            errors.push(FieldError::new(
                path,
                format!("{{{{data.{source}.…}}}}: no source `{source}` in `data`"),
            ));
            return;
        };
        if let Some(columns) = &d.layout.columns
            && !columns.iter().any(|c| c == column)
        {
            errors.push(FieldError::new(
                path,
                format!(
                    "{{{{data.{source}.{column}}}}}: `data.{source}.columns` has no `{column}` (its columns: {})",
                    columns.join(", ")
                ),
            ));
        }
    });
}

/// Attach each source's file text (by source name): parsed in the source's format, every
/// column a template names checked. How every process gets its rows: this machine's files
/// ([`read_files`]), a LoadTest's ConfigMaps (the operator), an `Assign` (a worker, which
/// trusts no input: the same parser and bounds). Sources not in `texts` stay as they were.
pub fn attach(plan: &mut Plan, texts: Vec<(String, String)>) -> Result<(), Vec<FieldError>> {
    let mut errors = Vec::new();
    let mut total: u64 = 0;
    for (name, text) in texts {
        let Some(d) = plan.data.iter_mut().find(|d| d.name == name) else {
            errors.push(FieldError::new(
                format!("data.{name}"),
                "rows were given for a source the plan does not declare",
            ));
            continue;
        };
        let field = format!("data.{name}.file");
        total = total.saturating_add(text.len() as u64);
        if total > MAX_DATA_BYTES {
            errors.push(FieldError::new(
                field,
                format!("the plan's data files add up to more than {MAX_DATA_BYTES} bytes"),
            ));
            continue;
        }
        match parse_with(&text, d.format, &d.types, &d.layout) {
            Ok(t) => {
                d.table = Some(Arc::new(t));
                d.text = Some(Arc::from(text));
            }
            Err(e) => errors.push(FieldError::new(field, format!("{}: {e}", d.file))),
        }
    }
    let plan = &*plan;
    for_each_ref(plan, |path, source, column| {
        let Some(d) = plan.data.iter().find(|d| d.name == source) else {
            return;
        };
        if let Some(t) = &d.table
            && t.column(column).is_none()
        {
            errors.push(FieldError::new(
                path,
                format!(
                    "{{{{data.{source}.{column}}}}}: {} has no column `{column}` (its columns: {})",
                    d.file,
                    t.columns.join(", ")
                ),
            ));
        }
    });
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

/// Read every source's file (relative paths from `base_dir`) and [`attach`] it: how a plan of
/// this machine's operator gets its data.
pub fn read_files(plan: &mut Plan, base_dir: &Path) -> Result<(), Vec<FieldError>> {
    let mut errors = Vec::new();
    let mut texts = Vec::new();
    for d in &plan.data {
        match read_file(base_dir, &d.file) {
            Ok(t) => texts.push((d.name.clone(), t)),
            Err(why) => errors.push(FieldError::new(format!("data.{}.file", d.name), why)),
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    attach(plan, texts)
}

/// The text of a data file (a relative path from `base_dir`, the plan file's directory), at
/// most [`MAX_DATA_BYTES`]; the error says which file and why.
pub fn read_file(base_dir: &Path, file: &str) -> Result<String, String> {
    let p = Path::new(file);
    let p = if p.is_absolute() {
        p.to_path_buf()
    } else {
        base_dir.join(p)
    };
    read_capped(&p).map_err(|why| format!("cannot read {}: {why}", p.display()))
}

/// A regular file of at most [`MAX_DATA_BYTES`], as UTF-8. The type is checked on the opened
/// file, so devices and FIFOs are refused before a byte is read.
fn read_capped(p: &Path) -> Result<String, String> {
    let file = std::fs::File::open(p).map_err(|e| e.to_string())?;
    let meta = file.metadata().map_err(|e| e.to_string())?;
    if !meta.is_file() {
        return Err("not a regular file".into());
    }
    let too_large = || format!("larger than {MAX_DATA_BYTES} bytes");
    if meta.len() > MAX_DATA_BYTES {
        return Err(too_large());
    }
    let mut bytes = Vec::new();
    file.take(MAX_DATA_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| e.to_string())?;
    if bytes.len() as u64 > MAX_DATA_BYTES {
        return Err(too_large());
    }
    String::from_utf8(bytes).map_err(|_| "not UTF-8 text".to_string())
}

/// Parse a data file's text, a CSV file with a header row and commas (at most
/// [`MAX_DATA_BYTES`] is the caller's to check).
pub fn parse(
    text: &str,
    format: DataFormat,
    types: &BTreeMap<String, ColumnType>,
) -> Result<Table, String> {
    parse_with(text, format, types, &CsvLayout::default())
}

/// Parse a data file's text, a CSV file laid out as `layout` says.
pub fn parse_with(
    text: &str,
    format: DataFormat,
    types: &BTreeMap<String, ColumnType>,
    layout: &CsvLayout,
) -> Result<Table, String> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let table = match format {
        DataFormat::Csv => parse_csv(text, types, layout)?,
        DataFormat::Jsonl => parse_jsonl(text)?,
    };
    if table.rows.is_empty() {
        return Err("no rows (a header alone, or an empty file)".into());
    }
    Ok(table)
}

fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_DATA_NAME {
        return Err(format!("must be 1 to {MAX_DATA_NAME} characters"));
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return Err(format!("{name:?} may use only A-Z a-z 0-9 _ -"));
    }
    Ok(())
}

fn check_columns(columns: &[String]) -> Result<(), String> {
    if columns.is_empty() {
        return Err("no columns".into());
    }
    if columns.len() > MAX_DATA_COLUMNS {
        return Err(format!(
            "{} columns, at most {MAX_DATA_COLUMNS}",
            columns.len()
        ));
    }
    for (i, c) in columns.iter().enumerate() {
        check_name(c).map_err(|e| format!("column {} ({c:?}): the name {e}", i + 1))?;
        if columns[..i].contains(c) {
            return Err(format!("column {} ({c:?}) is named twice", i + 1));
        }
    }
    Ok(())
}

/// RFC 4180 CSV: `,` (or the layout's delimiter) between fields, `"` around a field that
/// holds the delimiter, `"` or a line break, `""` for a quote inside; LF or CRLF line ends;
/// blank lines skipped. The first record is the header, unless the layout names the columns
/// (then every record is a row, but a skipped first one). Errors name the line.
fn parse_csv(
    text: &str,
    types: &BTreeMap<String, ColumnType>,
    layout: &CsvLayout,
) -> Result<Table, String> {
    let mut records = CsvRecords {
        chars: text.chars().peekable(),
        line: 1,
        delimiter: layout.delimiter,
    };
    let (columns, named_by) = match &layout.columns {
        Some(columns) => {
            check_columns(columns).map_err(|e| format!("`columns`: {e}"))?;
            if layout.skip_first_line {
                records.next_record()?;
            }
            (columns.clone(), "`columns`")
        }
        None => {
            let (_, header) = records
                .next_record()?
                .ok_or("empty file: the first line names the columns")?;
            let columns: Vec<String> = header.into_iter().map(|h| h.trim().to_string()).collect();
            check_columns(&columns).map_err(|e| format!("line 1 (the header): {e}"))?;
            (columns, "the header")
        }
    };
    let mut typed = vec![ColumnType::String; columns.len()];
    for (name, t) in types {
        let i = columns.iter().position(|c| c == name).ok_or_else(|| {
            format!(
                "`types` names the column `{name}`, which {named_by} does not have (its columns: {})",
                columns.join(", ")
            )
        })?;
        typed[i] = *t;
    }
    let mut rows = Vec::new();
    while let Some((line, fields)) = records.next_record()? {
        if fields.len() != columns.len() {
            return Err(format!(
                "line {line}: {} fields, {named_by} has {}",
                fields.len(),
                columns.len()
            ));
        }
        let values = fields
            .into_iter()
            .zip(&typed)
            .zip(&columns)
            .map(|((f, t), c)| {
                t.value(f)
                    .map_err(|e| format!("line {line}, column `{c}`: {e}"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        push_row(&mut rows, &columns, line, values.into_iter())?;
    }
    Ok(Table { columns, rows })
}

fn push_row(
    rows: &mut Vec<Vec<Value>>,
    columns: &[String],
    line: usize,
    row: impl Iterator<Item = Value>,
) -> Result<(), String> {
    if rows.len() >= MAX_DATA_ROWS {
        return Err(format!("line {line}: more than {MAX_DATA_ROWS} rows"));
    }
    if (rows.len() + 1).saturating_mul(columns.len()) > MAX_DATA_CELLS {
        return Err(format!(
            "line {line}: more than {MAX_DATA_CELLS} cells (rows x columns)"
        ));
    }
    rows.push(row.collect());
    Ok(())
}

struct CsvRecords<'a> {
    chars: std::iter::Peekable<std::str::Chars<'a>>,
    line: usize,
    /// Between fields: `,` or the layout's.
    delimiter: char,
}

impl CsvRecords<'_> {
    /// The next non-blank record and the line it starts on; `None` at the end.
    fn next_record(&mut self) -> Result<Option<(usize, Vec<String>)>, String> {
        loop {
            // Skip blank lines.
            match self.chars.peek() {
                None => return Ok(None),
                Some('\n') => {
                    self.chars.next();
                    self.line += 1;
                    continue;
                }
                Some('\r') => {
                    self.chars.next();
                    continue;
                }
                Some(_) => break,
            }
        }
        let start = self.line;
        let mut fields = Vec::new();
        let mut field = String::new();
        loop {
            match self.chars.next() {
                None => {
                    fields.push(field);
                    return Ok(Some((start, fields)));
                }
                Some('\n') => {
                    self.line += 1;
                    fields.push(field);
                    return Ok(Some((start, fields)));
                }
                Some('\r') if self.chars.peek() == Some(&'\n') => {}
                Some(c) if c == self.delimiter => {
                    fields.push(std::mem::take(&mut field));
                    if fields.len() > MAX_DATA_COLUMNS {
                        return Err(format!("line {start}: more than {MAX_DATA_COLUMNS} fields"));
                    }
                }
                Some('"') if field.is_empty() => {
                    self.quoted(&mut field, start)?;
                    // After the closing quote: a separator or the end of the record.
                    match self.chars.peek() {
                        None | Some('\n') | Some('\r') => {}
                        Some(&c) if c == self.delimiter => {}
                        Some(_) => {
                            return Err(format!(
                                "line {}: text after a closing quote (write \"\" for a quote inside a quoted field)",
                                self.line
                            ));
                        }
                    }
                }
                Some('"') => {
                    return Err(format!(
                        "line {}: a quote inside an unquoted field (quote the whole field and write \"\")",
                        self.line
                    ));
                }
                Some(c) => field.push(c),
            }
        }
    }

    /// The rest of a quoted field, its closing quote consumed.
    fn quoted(&mut self, field: &mut String, start: usize) -> Result<(), String> {
        loop {
            match self.chars.next() {
                None => return Err(format!("line {start}: a quoted field is never closed")),
                Some('"') if self.chars.peek() == Some(&'"') => {
                    self.chars.next();
                    field.push('"');
                }
                Some('"') => return Ok(()),
                Some(c) => {
                    if c == '\n' {
                        self.line += 1;
                    }
                    field.push(c);
                }
            }
        }
    }
}

/// JSON Lines: one object a line, blank lines skipped; the first object's keys are the
/// columns, and every later object has exactly those keys.
fn parse_jsonl(text: &str) -> Result<Table, String> {
    let mut columns: Option<Vec<String>> = None;
    let mut rows = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        if raw.trim().is_empty() {
            continue;
        }
        let obj: serde_json::Map<String, Value> = serde_json::from_str(raw).map_err(|e| {
            // Not serde's message: it may quote the value.
            let why = match e.classify() {
                serde_json::error::Category::Data => "not a JSON object",
                serde_json::error::Category::Eof => "incomplete JSON",
                _ => "not valid JSON",
            };
            format!("line {line}: {why} (at column {})", e.column())
        })?;
        let cols = match &columns {
            Some(c) => c,
            None => {
                let c: Vec<String> = obj.keys().cloned().collect();
                check_columns(&c).map_err(|e| format!("line {line}: {e}"))?;
                columns.insert(c)
            }
        };
        if obj.len() != cols.len() || !cols.iter().all(|c| obj.contains_key(c)) {
            return Err(format!(
                "line {line}: the keys differ from the first object's ({})",
                cols.join(", ")
            ));
        }
        let mut obj = obj;
        push_row(
            &mut rows,
            cols,
            line,
            cols.iter().map(|c| obj.remove(c).unwrap_or(Value::Null)),
        )?;
    }
    Ok(Table {
        columns: columns.ok_or("empty file: one JSON object a line")?,
        rows,
    })
}

/// The sources scenario `s` takes a row of in each iteration: those its templates name, in
/// the order of `plan.data`.
pub fn scenario_sources(plan: &Plan, s: usize) -> Vec<&str> {
    let mut named = Vec::new();
    if let Some(sc) = plan.scenarios.get(s) {
        for req in &sc.requests {
            request_templates(req, &mut |_, t| {
                for (source, _) in t.data_refs() {
                    named.push(source.to_string());
                }
            });
        }
    }
    plan.data
        .iter()
        .map(|d| d.name.as_str())
        .filter(|n| named.iter().any(|x| x == n))
        .collect()
}

/// Call `f(field path, source, column)` for every `{{data.*}}` of the plan.
fn for_each_ref(plan: &Plan, mut f: impl FnMut(String, &str, &str)) {
    for (si, sc) in plan.scenarios.iter().enumerate() {
        for (ri, req) in sc.requests.iter().enumerate() {
            request_templates(req, &mut |field, t| {
                for (source, column) in t.data_refs() {
                    f(
                        format!("scenarios[{si}].requests[{ri}].{field}"),
                        source,
                        column,
                    );
                }
            });
        }
    }
}

/// Every template of a request with its field: path, query, headers, body.
fn request_templates(req: &Request, f: &mut dyn FnMut(&str, &Template)) {
    f("path", &req.path);
    for (k, t) in &req.query {
        f(&format!("query.{k}"), t);
    }
    for (k, t) in &req.headers {
        f(&format!("headers.{k}"), t);
    }
    match &req.body {
        Some(Body::Text(t)) => f("body", t),
        Some(Body::Json(j)) => json_templates(j, "json", f),
        None => {}
    }
}

fn json_templates(j: &JsonTemplate, path: &str, f: &mut dyn FnMut(&str, &Template)) {
    match j {
        JsonTemplate::Literal(_) => {}
        JsonTemplate::String(t) => f(path, t),
        JsonTemplate::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                json_templates(item, &format!("{path}[{i}]"), f);
            }
        }
        JsonTemplate::Object(fields) => {
            for (k, v) in fields {
                json_templates(v, &format!("{path}.{k}"), f);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn csv_quotes_crlf_and_blank_lines() {
        let t = parse(
            "\u{feff}id,name\r\n1,\"a, b\"\r\n\r\n2,\"say \"\"hi\"\"\nthere\"\n3,\n",
            DataFormat::Csv,
            &BTreeMap::new(),
        )
        .unwrap();
        assert_eq!(t.columns, ["id", "name"]);
        assert_eq!(t.rows.len(), 3);
        assert_eq!(t.rows[0][1], "a, b");
        assert_eq!(t.rows[1][1], "say \"hi\"\nthere");
        assert_eq!(t.rows[2][1], "");
    }

    #[test]
    fn csv_errors_name_the_line() {
        let e = parse("a,b\n1,2\n3\n", DataFormat::Csv, &BTreeMap::new()).unwrap_err();
        assert!(e.contains("line 3: 1 fields, the header has 2"), "{e}");
        let e = parse("a,b\n1,\"2\n", DataFormat::Csv, &BTreeMap::new()).unwrap_err();
        assert!(e.contains("line 2: a quoted field is never closed"), "{e}");
        let e = parse("a,b\n1,\"2\"x\n", DataFormat::Csv, &BTreeMap::new()).unwrap_err();
        assert!(e.contains("line 2: text after a closing quote"), "{e}");
        assert!(
            parse("a,b\n", DataFormat::Csv, &BTreeMap::new())
                .unwrap_err()
                .contains("no rows")
        );
        assert!(
            parse("", DataFormat::Csv, &BTreeMap::new())
                .unwrap_err()
                .contains("empty file")
        );
        let e = parse("a,a\n1,2\n", DataFormat::Csv, &BTreeMap::new()).unwrap_err();
        assert!(e.contains("named twice"), "{e}");
        let e = parse("a,\n1,2\n", DataFormat::Csv, &BTreeMap::new()).unwrap_err();
        assert!(e.contains("column 2"), "{e}");
        let wide = (0..=MAX_DATA_COLUMNS)
            .map(|i| format!("c{i}"))
            .collect::<Vec<_>>();
        let e = parse(
            &format!("{}\n", wide.join(",")),
            DataFormat::Csv,
            &BTreeMap::new(),
        )
        .unwrap_err();
        assert!(e.contains("257 columns, at most 256"), "{e}");
    }

    #[test]
    fn csv_columns_may_have_types() {
        let types = BTreeMap::from([
            ("page".to_string(), ColumnType::Integer),
            ("ok".to_string(), ColumnType::Boolean),
            ("x".to_string(), ColumnType::Number),
        ]);
        let t = parse("page,ok,x,s\n3,true,1.5,7\n", DataFormat::Csv, &types).unwrap();
        assert_eq!(
            t.rows[0],
            vec![
                Value::from(3),
                Value::Bool(true),
                Value::from(1.5),
                Value::from("7")
            ]
        );
        let e = parse(
            "page,ok,x\n3,true,1\nthree,false,2\n",
            DataFormat::Csv,
            &types,
        )
        .unwrap_err();
        assert_eq!(e, "line 3, column `page`: the value is not an integer");
        let e = parse("p,ok,x\n3,true,1\n", DataFormat::Csv, &types).unwrap_err();
        assert!(e.contains("`types` names the column `page`"), "{e}");
    }

    fn layout(columns: &[&str], skip_first_line: bool, delimiter: char) -> CsvLayout {
        CsvLayout {
            columns: (!columns.is_empty()).then(|| columns.iter().map(|c| c.to_string()).collect()),
            skip_first_line,
            delimiter,
        }
    }

    #[test]
    fn csv_columns_named_by_the_plan() {
        let none = BTreeMap::new();
        // No header: every line is a row.
        let t = parse_with(
            "alice,pw1\nbob,pw2\n",
            DataFormat::Csv,
            &none,
            &layout(&["user", "password"], false, ','),
        )
        .unwrap();
        assert_eq!(t.columns, ["user", "password"]);
        assert_eq!(t.rows.len(), 2);
        assert_eq!(t.rows[0], ["alice", "pw1"]);
        // skipFirstLine: a header the plan's names replace (blank lines before it skipped).
        let t = parse_with(
            "\nname,pass\nalice,pw1\n",
            DataFormat::Csv,
            &none,
            &layout(&["user", "password"], true, ','),
        )
        .unwrap();
        assert_eq!(t.rows, vec![vec![Value::from("alice"), Value::from("pw1")]]);
        // Types name the plan's columns.
        let types = BTreeMap::from([("id".to_string(), ColumnType::Integer)]);
        let t = parse_with(
            "7,x\n",
            DataFormat::Csv,
            &types,
            &layout(&["id", "s"], false, ','),
        )
        .unwrap();
        assert_eq!(t.rows[0][0], Value::from(7));
        let e = parse_with(
            "7,x\n",
            DataFormat::Csv,
            &types,
            &layout(&["n", "s"], false, ','),
        )
        .unwrap_err();
        assert!(
            e.contains("which `columns` does not have (its columns: n, s)"),
            "{e}"
        );
        // A ragged row names its line and the plan's count.
        let e = parse_with(
            "a,b\nc\n",
            DataFormat::Csv,
            &none,
            &layout(&["x", "y"], false, ','),
        )
        .unwrap_err();
        assert_eq!(e, "line 2: 1 fields, `columns` has 2");
        // Only a header line, skipped: no rows.
        let e = parse_with(
            "x,y\n",
            DataFormat::Csv,
            &none,
            &layout(&["x", "y"], true, ','),
        )
        .unwrap_err();
        assert!(e.contains("no rows"), "{e}");
    }

    #[test]
    fn csv_delimiters() {
        let none = BTreeMap::new();
        // A tab, with a header row.
        let t = parse_with(
            "user\tpass\nalice\t\"a\tb\"\n",
            DataFormat::Csv,
            &none,
            &layout(&[], false, '\t'),
        )
        .unwrap();
        assert_eq!(t.columns, ["user", "pass"]);
        assert_eq!(t.rows[0], ["alice", "a\tb"]);
        // `;`, commas are then plain text, a quoted field holds the delimiter and quotes.
        let t = parse_with(
            "1,5;\"x;y\"\r\n2;\"say \"\"hi\"\"\"\n",
            DataFormat::Csv,
            &none,
            &layout(&["a", "b"], false, ';'),
        )
        .unwrap();
        assert_eq!(t.rows[0], ["1,5", "x;y"]);
        assert_eq!(t.rows[1], ["2", "say \"hi\""]);
        let e = parse_with(
            "1;\"x\",y\n",
            DataFormat::Csv,
            &none,
            &layout(&["a", "b"], false, ';'),
        )
        .unwrap_err();
        assert!(e.contains("line 1: text after a closing quote"), "{e}");
        let e = parse_with(
            "1;2;3\n",
            DataFormat::Csv,
            &none,
            &layout(&["a", "b"], false, ';'),
        )
        .unwrap_err();
        assert_eq!(e, "line 1: 3 fields, `columns` has 2");
    }

    #[test]
    fn jsonl_keys_are_the_columns() {
        let t = parse(
            "{\"id\": 1, \"tags\": [\"x\"]}\n\n{\"tags\": [], \"id\": 2}\n",
            DataFormat::Jsonl,
            &BTreeMap::new(),
        )
        .unwrap();
        assert_eq!(t.columns, ["id", "tags"]);
        assert_eq!(t.rows[1], vec![Value::from(2), serde_json::json!([])]);
        let e = parse(
            "{\"id\": 1}\n{\"di\": 2}\n",
            DataFormat::Jsonl,
            &BTreeMap::new(),
        )
        .unwrap_err();
        assert!(e.contains("line 2: the keys differ"), "{e}");
        let e = parse("{\"id\": 1}\n[1]\n", DataFormat::Jsonl, &BTreeMap::new()).unwrap_err();
        assert!(e.contains("line 2: not a JSON object"), "{e}");
        let e = parse(
            "{\"id\": 1}\n\"hunter2\"\n",
            DataFormat::Jsonl,
            &BTreeMap::new(),
        )
        .unwrap_err();
        assert_eq!(e, "line 2: not a JSON object (at column 9)");
        assert!(
            parse("\n", DataFormat::Jsonl, &BTreeMap::new())
                .unwrap_err()
                .contains("empty file")
        );
    }

    /// A plan and its data files in a fresh directory.
    fn load(plan: &str, files: &[(&str, &str)]) -> Result<Plan, crate::PlanError> {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "pacer-data-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(dir.join("data")).unwrap();
        for (name, text) in files {
            std::fs::write(dir.join(name), text).unwrap();
        }
        std::fs::write(dir.join("plan.yaml"), plan).unwrap();
        let out = crate::load_file(&dir.join("plan.yaml"));
        let _ = std::fs::remove_dir_all(&dir);
        out
    }

    fn plan(data: &str, scenarios: &str) -> String {
        format!("name: t\ntarget: http://127.0.0.1:9\ndata:\n{data}\nscenarios:\n{scenarios}")
    }

    const USERS: &str = "  users: { file: data/users.csv, mode: unique }";
    const ONE: &str = "  - { name: s, executor: shared-iterations, vus: 2, iterations: 10, requests: [{ name: r, path: \"/u/{{data.users.email}}\", json: { id: \"{{data.users.id}}\" } }] }";

    #[test]
    fn a_plan_reads_its_files_relative_to_itself() {
        let p = load(
            &plan(USERS, ONE),
            &[("data/users.csv", "id,email\n1,a@x\n2,b@x\n")],
        )
        .unwrap();
        let t = p.data[0].table.as_ref().unwrap();
        assert_eq!(t.rows.len(), 2);
        assert_eq!(p.data[0].mode, DataMode::Unique);
        assert_eq!(scenario_sources(&p, 0), ["users"]);
        assert_eq!(iterations_taking(&p, "users"), Some(10));
    }

    #[test]
    fn errors_name_the_field() {
        let paths = |r: Result<Plan, crate::PlanError>| {
            let e = r.unwrap_err();
            e.field_errors()
                .iter()
                .map(|f| f.to_string())
                .collect::<Vec<_>>()
        };
        let e = paths(load(&plan(USERS, ONE), &[]));
        assert!(e[0].starts_with("data.users.file: cannot read"), "{e:?}");
        let e = paths(load(
            &plan(USERS, ONE),
            &[("data/users.csv", "id,mail\n1,a\n")],
        ));
        assert!(
            e[0].starts_with("scenarios[0].requests[0].path: {{data.users.email}}: data/users.csv has no column `email` (its columns: id, mail)"),
            "{e:?}"
        );
        let e = paths(load(
            &plan(USERS, ONE),
            &[("data/users.csv", "id,email\n1\n")],
        ));
        assert_eq!(
            e,
            ["data.users.file: data/users.csv: line 2: 1 fields, the header has 2"]
        );
        let e = paths(load(&plan(USERS, ONE), &[("data/users.csv", "id,email\n")]));
        assert!(e[0].contains("no rows"), "{e:?}");
        let other = ONE.replace("data.users.id", "data.people.id");
        let e = paths(load(
            &plan(USERS, &other),
            &[("data/users.csv", "id,email\n1,a\n")],
        ));
        assert!(
            e[0].starts_with(
                "scenarios[0].requests[0].json.id: {{data.people.…}}: no source `people`"
            ),
            "{e:?}"
        );
        let e = paths(load(
            &plan("  users: { file: users.txt }", ONE),
            &[("users.txt", "id,email\n1,a\n")],
        ));
        assert!(e[0].starts_with("data.users.format:"), "{e:?}");
        let e = paths(load(
            &plan("  users: { file: data/users.csv, mode: once }", ONE),
            &[],
        ));
        assert!(e[0].starts_with("data.users.mode:"), "{e:?}");
    }

    #[test]
    fn columns_and_delimiter_are_checked_with_the_plan() {
        let errors = |data: &str, scenarios: &str| {
            let e = load(&plan(data, scenarios), &[]).unwrap_err();
            e.field_errors()
                .iter()
                .map(|f| f.to_string())
                .collect::<Vec<_>>()
        };
        const PLAIN: &str = "  - { name: s, executor: shared-iterations, vus: 1, iterations: 1, requests: [{ name: r, path: / }] }";
        assert_eq!(
            errors("  users: { file: u.csv, delimiter: \"ab\" }", PLAIN),
            ["data.users.delimiter: one character (`\"\\t\"` for a tab), got 2"]
        );
        assert_eq!(
            errors("  users: { file: u.csv, delimiter: \"\" }", PLAIN),
            ["data.users.delimiter: one character (`\"\\t\"` for a tab), got 0"]
        );
        assert_eq!(
            errors("  users: { file: u.csv, delimiter: '\"' }", PLAIN),
            ["data.users.delimiter: `\"` quotes fields: it cannot also separate them"]
        );
        assert_eq!(
            errors("  users: { file: u.csv, delimiter: \"\\n\" }", PLAIN),
            ["data.users.delimiter: a line break ends a row: it cannot separate fields"]
        );
        assert_eq!(
            errors(
                "  users: { file: u.jsonl, columns: [a], skipFirstLine: true, delimiter: \";\" }",
                PLAIN
            ),
            [
                "data.users.columns: `columns` is for CSV files: a JSON Lines object names its own columns and needs no separator",
                "data.users.skipFirstLine: `skipFirstLine` is for CSV files: a JSON Lines object names its own columns and needs no separator",
                "data.users.delimiter: `delimiter` is for CSV files: a JSON Lines object names its own columns and needs no separator",
            ]
        );
        assert_eq!(
            errors("  users: { file: u.csv, skipFirstLine: true }", PLAIN),
            [
                "data.users.skipFirstLine: only with `columns`: without them the first line is the header, never a row"
            ]
        );
        assert_eq!(
            errors(
                "  users: { file: u.csv, columns: [user, \"pass word\", user], types: { id: integer } }",
                PLAIN
            ),
            [
                "data.users.columns[1]: the name \"pass word\" may use only A-Z a-z 0-9 _ -",
                "data.users.columns[2]: `user` is named twice",
                "data.users.types.id: not one of `columns` (user, pass word, user)",
            ]
        );
        assert_eq!(
            errors("  users: { file: u.csv, columns: [] }", PLAIN),
            ["data.users.columns: name at least one column"]
        );
        // A template's column is checked against `columns` before any file is read.
        assert_eq!(
            errors("  users: { file: u.csv, columns: [id, mail] }", ONE),
            [
                "scenarios[0].requests[0].path: {{data.users.email}}: `data.users.columns` has no `email` (its columns: id, mail)"
            ]
        );
    }

    #[test]
    fn a_plan_names_the_columns_of_a_file_without_header() {
        let data = "  users: { file: data/users.txt, format: csv, mode: unique, columns: [id, email], skipFirstLine: true, delimiter: \"\\t\" }";
        let p = load(
            &plan(data, ONE),
            &[("data/users.txt", "ID\tEMAIL\n1\ta@x\n2\t\"b\tx\"\n")],
        )
        .unwrap();
        let d = &p.data[0];
        assert_eq!(d.layout.delimiter, '\t');
        let t = d.table.as_ref().unwrap();
        assert_eq!(t.columns, ["id", "email"]);
        assert_eq!(t.rows[1], ["2", "b\tx"]);
        // What a worker gets: the plan's text and the file's; the same layout parses it.
        let mut remote = crate::load_str(
            &plan(data, ONE),
            "plan.yaml",
            &crate::Refs::Remote {
                provided: &|_| None,
            },
        )
        .unwrap();
        attach(
            &mut remote,
            vec![("users".into(), d.text.as_deref().unwrap().to_string())],
        )
        .unwrap();
        assert_eq!(remote.data[0].table, d.table);
        // A ragged row: the file and the line.
        let e = load(&plan(data, ONE), &[("data/users.txt", "ID\tEMAIL\n1\n")]).unwrap_err();
        assert_eq!(
            e.field_errors()[0].to_string(),
            "data.users.file: data/users.txt: line 2: 1 fields, `columns` has 2"
        );
        // Validation without the files leaves the source unattached.
        let p = crate::load_str_without_data(
            &plan(data, ONE),
            "plan.yaml",
            &crate::Refs::Local {
                env: &|_| None,
                base_dir: std::path::PathBuf::from("/nonexistent"),
            },
        )
        .unwrap();
        assert!(p.data[0].table.is_none());
    }

    #[test]
    fn a_loadtest_reads_no_file() {
        let m = format!(
            "apiVersion: pacer.dev/v1alpha1\nkind: LoadTest\nmetadata: {{name: x}}\nspec:\n  plan:\n{}",
            plan(USERS, ONE)
                .lines()
                .map(|l| format!("    {l}\n"))
                .collect::<String>()
        );
        // The file is there, but a LoadTest's plan reads nothing: its rows stay unattached.
        let p = load(&m, &[("data/users.csv", "id,email\n1,a\n")]).unwrap();
        assert!(p.data[0].table.is_none());
    }

    #[test]
    fn unique_rows_are_split_like_the_iterations() {
        let rows: String = (0..10).map(|i| format!("{i},u{i}\n")).collect();
        let p = load(
            &plan(USERS, ONE),
            &[("data/users.csv", &format!("id,email\n{rows}"))],
        )
        .unwrap();
        let d = &p.data[0];
        assert_eq!(d.share(&p, &Shard::whole()), 0..10);
        // 2 VUs on 3 workers: the third has no VU, so no iteration, so no row.
        let shares: Vec<_> = Shard::all(&[1, 1, 1])
            .unwrap()
            .iter()
            .map(|s| d.share(&p, s))
            .collect();
        assert_eq!(shares, [0..5, 5..10, 10..10]);
        for s in Shard::all(&[1, 1, 1]).unwrap() {
            let (first, n) = s.shared_iterations(10, 2);
            assert_eq!(d.share(&p, &s), first as usize..(first + n) as usize);
        }
        // VU executors: by the weights.
        let vus = ONE.replace(
            "shared-iterations, vus: 2, iterations: 10",
            "constant-vus, vus: 3, duration: 1s",
        );
        let p = load(
            &plan(USERS, &vus),
            &[("data/users.csv", &format!("id,email\n{rows}"))],
        )
        .unwrap();
        let shares: Vec<_> = Shard::all(&[1, 2])
            .unwrap()
            .iter()
            .map(|s| p.data[0].share(&p, s))
            .collect();
        assert_eq!(shares, [0..3, 3..10]);
        // cycle and random: every worker holds every row.
        let cycle = USERS.replace("unique", "cycle");
        let p = load(
            &plan(&cycle, ONE),
            &[("data/users.csv", &format!("id,email\n{rows}"))],
        )
        .unwrap();
        assert_eq!(p.data[0].share(&p, &Shard::equal(1, 3).unwrap()), 0..10);
    }
}
