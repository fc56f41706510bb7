//! `pacer import jmeter TEST.jmx` and `pacer import har FILE.har`: write a pacer plan from a
//! JMeter test plan or a browser/proxy recording (crates/pacer-import), and list what was
//! not translated. The plan goes to `-o FILE` or stdout; the list goes after it (stdout with
//! `-o`, stderr without, so stdout stays a plan that can be piped).

use std::path::{Path, PathBuf};
use std::time::Duration;

use pacer_import::{Import, NoteKind};

use crate::exit::{self, Exit};

#[derive(clap::Args, Debug)]
pub struct ImportArgs {
    #[command(subcommand)]
    pub source: Source,
}

#[derive(clap::Subcommand, Debug)]
pub enum Source {
    /// A JMeter test plan (.jmx): thread groups, HTTP samplers, headers, variables,
    /// assertions, extractors and throughput timers to a plan (docs/getting-started.md,
    /// "Coming from JMeter").
    Jmeter {
        /// The .jmx file.
        file: PathBuf,
        /// Write the plan here instead of stdout.
        #[arg(short, long)]
        output: Option<PathBuf>,
        /// How long a thread group that loops for ever without a scheduler runs.
        #[arg(long, default_value = "1m", value_parser = crate::flags::parse_duration)]
        duration: Duration,
    },
    /// A HAR recording (a browser's or a proxy's): its API calls, in order, as one scenario;
    /// credentials are never copied.
    Har {
        /// The .har file.
        file: PathBuf,
        /// Write the plan here instead of stdout.
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
}

pub fn run(args: &ImportArgs) -> Exit {
    let (file, output) = match &args.source {
        Source::Jmeter { file, output, .. } | Source::Har { file, output } => (file, output),
    };
    let text = match read_bounded(file) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("{}: {e}", file.display());
            return Exit::Invalid;
        }
    };
    let name = file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| file.display().to_string());
    let result = match &args.source {
        Source::Jmeter { duration, .. } => pacer_import::jmeter::import(
            &text,
            &pacer_import::jmeter::Options {
                source_name: name,
                forever_duration: *duration,
            },
        ),
        Source::Har { .. } => pacer_import::har::import(&text, &name),
    };
    let import = match result {
        Ok(i) => i,
        Err(e) => {
            eprintln!(
                "{}: {}",
                file.display(),
                exit::error_text(std::iter::successors(
                    Some(&e as &(dyn std::error::Error + 'static)),
                    |e| e.source()
                ))
            );
            // Every error is the input's (a plan that does not validate: a number beyond the
            // plan's bounds).
            return Exit::Invalid;
        }
    };
    match output {
        Some(out) => {
            if let Err(e) = std::fs::write(out, &import.yaml) {
                eprintln!("{}: cannot write: {e}", out.display());
                return Exit::Failure;
            }
            crate::outln!("{}: plan written (it validates)", out.display());
            if !import.data_files.is_empty() {
                crate::outln!(
                    "its data files, which `pacer run` reads relative to it: {}",
                    import.data_files.join(", ")
                );
            }
            crate::out!("{}", listing(&import));
        }
        None => {
            crate::out!("{}", import.yaml);
            eprint!("{}", listing(&import));
        }
    }
    Exit::Passed
}

/// The list of what was not translated, approximated or disabled.
fn listing(import: &Import) -> String {
    if import.notes.is_empty() {
        return "everything was translated\n".into();
    }
    let count = |k: NoteKind| import.notes.iter().filter(|n| n.kind == k).count();
    let mut s = format!(
        "not translated: {}, approximated: {}, disabled: {} (each is also a comment in the plan)\n",
        count(NoteKind::Untranslated),
        count(NoteKind::Approximated),
        count(NoteKind::Disabled)
    );
    for n in &import.notes {
        s.push_str(&format!("  - {n}\n"));
    }
    s
}

/// The file's text, refusing more than either format's largest before reading it all.
fn read_bounded(p: &Path) -> Result<String, String> {
    let max = pacer_import::MAX_HAR_BYTES.max(pacer_import::MAX_JMX_BYTES);
    let meta = std::fs::metadata(p).map_err(|e| e.to_string())?;
    if !meta.is_file() {
        return Err("not a regular file".into());
    }
    if meta.len() > max as u64 {
        return Err(format!(
            "{} bytes: more than the {max} an import reads",
            meta.len()
        ));
    }
    let bytes = std::fs::read(p).map_err(|e| e.to_string())?;
    String::from_utf8(bytes).map_err(|_| "not UTF-8 text".to_string())
}
