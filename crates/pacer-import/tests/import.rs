//! `pacer import` on the .jmx and .har files of tests/data (written for these tests): each
//! imports to a plan that validates (`pacer_plan::load_str`), with the executors, requests
//! and checks the source implies, and the list of what was not translated. Malformed input
//! gives an error naming what is wrong, never a panic. The runs against `pacer mock` are in
//! tests/tests/import.rs (real processes).

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::path::Path;

use pacer_import::{ImportError, NoteKind, har, jmeter};
use pacer_plan::{Executor, Plan};

fn data(name: &str) -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data")
            .join(name),
    )
    .unwrap()
}

/// The imported plan as `pacer run` validates it, but for its data files (read by
/// [`with_files`]).
fn load(yaml: &str) -> Plan {
    let refs = pacer_plan::Refs::Local {
        env: &|_| None,
        base_dir: Default::default(),
    };
    pacer_plan::load_str_without_data(yaml, "imported.yaml", &refs)
        .unwrap_or_else(|e| panic!("the imported plan does not validate: {e}\n{yaml}"))
}

fn import_jmx(name: &str) -> (pacer_import::Import, Plan) {
    let i = jmeter::import(
        &data(name),
        &jmeter::Options {
            source_name: name.into(),
            ..Default::default()
        },
    )
    .unwrap();
    let plan = load(&i.yaml);
    (i, plan)
}

fn untranslated(i: &pacer_import::Import) -> Vec<(NoteKind, String)> {
    i.notes
        .iter()
        .map(|n| (n.kind, n.element.clone()))
        .collect()
}

#[test]
fn thread_groups_become_executors() {
    let (i, plan) = import_jmx("thread_groups.jmx");
    let s = &plan.scenarios;
    assert_eq!(s.len(), 2, "the disabled thread group is not imported");
    assert_eq!(s[0].name, "fixed");
    assert!(matches!(s[0].executor, Executor::PerVuIterations { .. }));
    assert_eq!(s[0].requests.len(), 2);
    assert!(matches!(s[1].executor, Executor::RampingVus { .. }));
    assert!(i.yaml.contains("vus: 3\n    iterations: 4"), "{}", i.yaml);
    assert!(
        i.yaml.contains("quantity: \"{{vars.pageSize}}\""),
        "{}",
        i.yaml
    );
    assert!(i.yaml.contains("id: \"{{uuid}}\""), "{}", i.yaml);
    assert!(
        i.yaml.contains("pageSize: \"{{vars.pageSize}}\""),
        "query: {}",
        i.yaml
    );
    assert!(
        untranslated(&i).contains(&(NoteKind::Disabled, "ThreadGroup".into())),
        "{:?}",
        i.notes
    );
    assert!(
        !i.notes.iter().any(|n| n.kind == NoteKind::Untranslated),
        "{:?}",
        i.notes
    );
}

/// The plan loaded as `pacer run` loads it, from a directory holding it and `files`.
fn with_files(yaml: &str, files: &[(&str, &str)]) -> Result<Plan, pacer_plan::PlanError> {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in files {
        let p = dir.path().join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }
    let plan = dir.path().join("imported.yaml");
    std::fs::write(&plan, yaml).unwrap();
    pacer_plan::load_file(&plan)
}

#[test]
fn csv_data_sets_and_header_managers() {
    let (i, plan) = import_jmx("csv_headers.jmx");
    // The CSV Data Set (no header row, `;`, each line once) is a data source, its variables
    // its columns; nothing about it is approximated.
    assert!(
        i.yaml.contains(
            "data:\n  users:\n    # JMeter reads users.csv relative to the .jmx; pacer relative to this plan file: put it beside the plan (or change `file`).\n    file: \"users.csv\"\n    # Each line once"
        ),
        "{}",
        i.yaml
    );
    assert!(
        i.yaml.contains(
            "    mode: \"unique\"\n    columns:\n      - \"user\"\n      - \"pass\"\n    delimiter: \";\"\n"
        ),
        "{}",
        i.yaml
    );
    assert!(!i.yaml.contains("skipFirstLine"), "{}", i.yaml);
    assert!(
        !i.notes.iter().any(|n| n.element == "CSVDataSet"),
        "{:?}",
        i.notes
    );
    assert!(!plan.variables.contains_key("user") && !plan.variables.contains_key("pass"));
    assert_eq!(plan.data[0].name, "users");
    assert_eq!(plan.data[0].mode, pacer_plan::data::DataMode::Unique);
    assert!(
        plan.data[0].table.is_none(),
        "the import reads no data file"
    );
    assert_eq!(i.data_files, ["users.csv"]);
    // Beside the plan, the file is read with the plan's columns and delimiter.
    let ran = with_files(&i.yaml, &[("users.csv", "alice;pw1\n\"b;ob\";pw2\n")]).unwrap();
    let t = ran.data[0].table.as_ref().unwrap();
    assert_eq!(t.columns, ["user", "pass"]);
    assert_eq!(t.rows[1], ["b;ob", "pw2"]);
    let e = with_files(&i.yaml, &[("users.csv", "alice,pw1\n")]).unwrap_err();
    assert!(
        e.to_string()
            .contains("data.users.file: users.csv: line 1: 1 fields, `columns` has 2"),
        "{e}"
    );
    // The Authorization header's value is never copied.
    assert!(!i.yaml.contains("abc123"), "{}", i.yaml);
    assert!(
        i.yaml.contains("Authorization: \"{{vars.authorization}}\""),
        "{}",
        i.yaml
    );
    assert!(i.yaml.contains("${env:PACER_AUTHORIZATION:-}"));
    assert_eq!(
        i.notes
            .iter()
            .filter(|n| n.element == "HeaderManager")
            .count(),
        1,
        "one note for the secret header, not one per sampler: {:?}",
        i.notes
    );
    // Headers from the plan's manager and the sampler's own; the form body and its type.
    assert!(i.yaml.contains("X-Step: \"login\""));
    assert!(i.yaml.contains("X-Client: \"jmeter {{vars.client}}\""));
    assert!(
        i.yaml
            .contains("body: \"user={{data.users.user}}&pass={{data.users.pass}}\""),
        "{}",
        i.yaml
    );
    assert!(
        i.yaml
            .contains("Content-Type: \"application/x-www-form-urlencoded\"")
    );
    assert_eq!(plan.scenarios[0].requests.len(), 2);
}

#[test]
fn throughput_timers_become_arrival_rates() {
    let (i, plan) = import_jmx("throughput.jmx");
    let s = &plan.scenarios;
    assert!(matches!(
        s[0].executor,
        Executor::ConstantArrivalRate { .. }
    ));
    assert!(matches!(
        s[1].executor,
        Executor::ConstantArrivalRate { .. }
    ));
    // 600/min over one sampler for 3 s; 20/s over two samplers: 10 iterations/s, 5 x 2 of them.
    assert!(
        i.yaml
            .contains("rate: \"10/s\"\n    duration: \"3s\"\n    maxInFlight: 5"),
        "{}",
        i.yaml
    );
    assert!(
        i.yaml.contains("rate: \"10/s\"\n    duration: \"1s\""),
        "{}",
        i.yaml
    );
    assert!(i.yaml.contains("thinkTime: \"100ms\""));
    assert_eq!(
        untranslated(&i),
        vec![(NoteKind::Approximated, "ConstantTimer".into())]
    );
}

#[test]
fn assertions_extractors_and_transactions() {
    let (i, plan) = import_jmx("assertions_extractors.jmx");
    let r = &plan.scenarios[0].requests;
    assert_eq!(r[0].name, "Login - post login");
    assert!(
        i.yaml.contains("status:\n            - 200\n"),
        "{}",
        i.yaml
    );
    assert!(
        i.yaml
            .contains("equals: true\n              pointer: \"/ok\""),
        "{}",
        i.yaml
    );
    assert!(
        i.yaml
            .contains("exists: true\n              pointer: \"/path\"")
    );
    assert!(i.yaml.contains("method:\n            json: \"/method\""));
    assert!(
        i.yaml
            .contains("ctype:\n            header: \"Content-Type\"")
    );
    assert!(i.yaml.contains("path: \"/items/{{vars.method}}\""));
    assert!(i.yaml.contains("- 200\n            - 201"));
    let list = untranslated(&i);
    assert!(
        list.contains(&(NoteKind::Untranslated, "RegexExtractor".into())),
        "{list:?}"
    );
    assert!(list.contains(&(NoteKind::Untranslated, "ResponseAssertion".into())));
    assert!(list.contains(&(NoteKind::Approximated, "TransactionController".into())));
}

#[test]
fn unsupported_elements_are_listed_and_commented_where_they_were() {
    let (i, plan) = import_jmx("unsupported.jmx");
    assert_eq!(plan.scenarios[0].requests.len(), 2);
    let list = untranslated(&i);
    for element in [
        "CookieManager",
        "ResultCollector",
        "JSR223Sampler",
        "JSR223PostProcessor",
        "DebugSampler",
        "HeaderManager",
    ] {
        assert!(
            list.contains(&(NoteKind::Untranslated, element.into())),
            "{element}: {list:?}"
        );
    }
    assert!(list.contains(&(NoteKind::Approximated, "IfController".into())));
    // Every note is a comment in the plan.
    for n in &i.notes {
        assert!(
            i.yaml.contains(&format!("<{}> {}", n.element, n.location)),
            "{n} is not in the plan:\n{}",
            i.yaml
        );
    }
    // The post-processor's comment is on its sampler's request.
    let at = i.yaml.find("<JSR223PostProcessor>").unwrap();
    let always = i.yaml.find("name: \"always\"").unwrap();
    assert!(
        at < always && i.yaml[at..always].lines().count() <= 3,
        "{}",
        i.yaml
    );
    // The unknown function is sent as written, never read as a reference.
    assert!(
        i.yaml.contains("X-Sum: \"$${__groovy(1+1)}\""),
        "{}",
        i.yaml
    );
}

#[test]
fn the_user_story_example_is_the_import_of_its_jmx() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/jmeter");
    let jmx = std::fs::read_to_string(root.join("user-story.jmx")).unwrap();
    let i = jmeter::import(
        &jmx,
        &jmeter::Options {
            source_name: "user-story.jmx".into(),
            ..Default::default()
        },
    )
    .unwrap();
    let plan = load(&i.yaml);
    assert!(matches!(
        plan.scenarios[0].executor,
        Executor::ConstantVus { .. }
    ));
    let committed = std::fs::read_to_string(root.join("user-story.yaml")).unwrap();
    assert_eq!(
        committed, i.yaml,
        "examples/jmeter/user-story.yaml is not what `pacer import jmeter examples/jmeter/user-story.jmx` writes: regenerate it"
    );
}

#[test]
fn har_recordings() {
    let i = har::import(&data("recording.har"), "recording.har").unwrap();
    let plan = load(&i.yaml);
    let names: Vec<_> = plan.scenarios[0]
        .requests
        .iter()
        .map(|r| r.name.as_str())
        .collect();
    assert_eq!(
        names,
        [
            "01 GET /api/v2/users/me",
            "02 POST /api/v2/analytics/conversations/details/query",
            "03 POST /login",
            "04 DELETE /api/v2/users/me/sessions/1"
        ]
    );
    for secret in ["recorded-secret-token-42", "recorded-cookie-99"] {
        assert!(!i.yaml.contains(secret), "{secret} copied:\n{}", i.yaml);
    }
    for dropped in [
        "Host:",
        "Connection:",
        "sec-ch-ua",
        "Accept-Encoding",
        "Content-Length",
    ] {
        assert!(!i.yaml.contains(dropped), "{dropped} kept:\n{}", i.yaml);
    }
    assert!(
        i.yaml
            .contains("path: \"/api/v2/users/me?expand=presence\"")
    );
    assert!(i.yaml.contains("note: \"$${not a reference}\""));
    assert!(i.yaml.contains("body: \"user=ann&next=%2Fhome+page\""));
    let static_note = i
        .notes
        .iter()
        .find(|n| n.element == "static assets")
        .unwrap();
    assert!(
        static_note.message.starts_with("3 requests"),
        "{static_note}"
    );
}

#[test]
fn har_other_origins_are_allowed_hosts() {
    let text = r#"{"log": {"entries": [
        {"request": {"method": "GET", "url": "https://api.example.com/v1/a", "headers": []}},
        {"request": {"method": "GET", "url": "https://files.example.com:8443/b", "headers": [{"name": "X-Api-Key", "value": "k-123456"}]}}
    ]}}"#;
    let i = har::import(text, "x.har").unwrap();
    load(&i.yaml);
    assert!(
        i.yaml
            .contains("target: \"${env:PACER_TARGET:-https://api.example.com}\"")
    );
    assert!(
        i.yaml.contains("- \"files.example.com:8443\""),
        "{}",
        i.yaml
    );
    assert!(
        i.yaml
            .contains("path: \"https://files.example.com:8443/b\"")
    );
    assert!(!i.yaml.contains("k-123456"));
}

#[test]
fn malformed_input_is_an_error_naming_what_is_wrong() {
    let opts = jmeter::Options::default();
    let err = |t: &str| jmeter::import(t, &opts).unwrap_err().to_string();
    assert!(err("not xml at all").contains("not well-formed XML"));
    assert!(
        err("<html><body/></html>")
            .contains("the root element is <html>, expected <jmeterTestPlan>")
    );
    assert!(err("<jmeterTestPlan/>").contains("<jmeterTestPlan>: has no <hashTree>"));
    assert!(err("<jmeterTestPlan><hashTree/></jmeterTestPlan>").contains("has no <TestPlan>"));
    assert!(
        err("<jmeterTestPlan><hashTree><TestPlan testname=\"p\"/><hashTree/></hashTree></jmeterTestPlan>")
            .contains("nothing to import")
    );
    // A DTD (entities, external or not) is refused, nothing is fetched.
    let xxe = "<?xml version=\"1.0\"?><!DOCTYPE x [<!ENTITY e SYSTEM \"file:///etc/passwd\">]><jmeterTestPlan>&e;</jmeterTestPlan>";
    assert!(err(xxe).contains("not well-formed XML"), "{}", err(xxe));
    // A thread count that is not a number names the element and the field.
    let bad = data("thread_groups.jmx").replace(
        "<stringProp name=\"ThreadGroup.num_threads\">3</stringProp>",
        "<stringProp name=\"ThreadGroup.num_threads\">many</stringProp>",
    );
    let e = err(&bad);
    assert!(
        e.contains("ThreadGroup testname=\"fixed\"") && e.contains("ThreadGroup.num_threads"),
        "{e}"
    );
    // A number beyond the plan's bounds: the plan's own error, naming the field.
    let many = data("thread_groups.jmx").replace(
        "<stringProp name=\"ThreadGroup.num_threads\">3</stringProp>",
        "<stringProp name=\"ThreadGroup.num_threads\">2000000</stringProp>",
    );
    let e = err(&many);
    assert!(
        e.contains("does not validate") && e.contains("scenarios[0].vus"),
        "{e}"
    );
    // Too large.
    let huge = " ".repeat(pacer_import::MAX_JMX_BYTES + 1);
    assert!(matches!(
        jmeter::import(&huge, &opts),
        Err(ImportError::TooLarge { .. })
    ));
    // Deep nesting is bounded.
    let deep = format!(
        "<jmeterTestPlan><hashTree><TestPlan/>{}{}</hashTree></jmeterTestPlan>",
        "<hashTree><GenericController/>".repeat(200),
        "</hashTree>".repeat(200)
    );
    let _ = jmeter::import(&deep, &opts).unwrap_err();

    let herr = |t: &str| har::import(t, "x.har").unwrap_err().to_string();
    assert!(herr("nope").contains("not a HAR file"));
    assert!(herr("{}").starts_with("log:"), "{}", herr("{}"));
    assert!(herr(r#"{"log": {}}"#).starts_with("log.entries:"));
    assert!(herr(r#"{"log": {"entries": [{"request": {}}]}}"#).starts_with("log.entries[]:"));
    assert!(herr(r#"{"log": {"entries": []}}"#).contains("nothing to import"));
    assert!(
        herr(r#"{"log": {"entries": [{"request": {"method": "G T", "url": "http://a/"}}]}}"#)
            .contains("entries[0].request.method")
    );
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

    /// Any text, and any mangling of a real plan, is an import or an error: never a panic.
    #[test]
    fn never_panics(s in "\\PC{0,400}", cut in 0usize..6000, insert in "[<>&\"${}a-z/]{0,12}") {
        let _ = jmeter::import(&s, &jmeter::Options::default());
        let _ = har::import(&s, "x.har");
        let real = data("assertions_extractors.jmx");
        let mut cut_at = cut.min(real.len());
        while !real.is_char_boundary(cut_at) {
            cut_at -= 1;
        }
        let mangled = format!("{}{insert}{}", &real[..cut_at], &real[cut_at..]);
        if let Ok(i) = jmeter::import(&mangled, &jmeter::Options::default()) {
            load(&i.yaml);
        }
    }
}

#[test]
fn csv_data_sets_become_data_sources() {
    let (i, plan) = import_jmx("csv_sets.jmx");
    let y = &i.yaml;
    // A tab, a skipped header line, a file name that is not .csv; each line once per thread
    // group in JMeter, with <EOF> after the last: pacer cycles, shared by the test (noted).
    assert!(
        y.contains(
            "    file: \"data/products.tsv\"\n    format: \"csv\"\n    mode: \"cycle\"\n    columns:\n      - \"sku\"\n      - \"qty\"\n    skipFirstLine: true\n    delimiter: \"\\t\"\n"
        ),
        "{y}"
    );
    // Allow quoted data off: said above the file.
    assert!(y.contains("\"Allow quoted data\" is off"), "{y}");
    // No variable names: no columns, the first line is the header.
    assert!(
        y.contains("  regions:\n    # JMeter reads regions.csv relative to the .jmx; pacer relative to this plan file: put it beside the plan (or change `file`).\n    # Its first line names the columns, as in JMeter (variableNames is empty).\n    file: \"regions.csv\"\n    mode: \"cycle\"\n  accounts:"),
        "{y}"
    );
    // An absolute path is kept; names are sanitized (`api key`), `|` is the delimiter.
    assert!(
        y.contains("  accounts:\n    file: \"/srv/jmeter/accounts.dat\"\n    format: \"csv\"\n    mode: \"cycle\"\n    columns:\n      - \"user\"\n      - \"api_key\"\n    delimiter: \"|\"\n"),
        "{y}"
    );
    // The same stem twice: a second name; a Windows path with `/`; recycle off and stop
    // thread on: each line once.
    assert!(
        y.contains("  products_2:\n    # JMeter reads more\\products.csv relative to the .jmx; pacer relative to this plan file: put it beside the plan (or change `file`).\n    file: \"more/products.csv\"\n"),
        "{y}"
    );
    assert!(
        y.contains("    mode: \"unique\"\n    columns:\n      - \"code\"\n"),
        "{y}"
    );
    // Every reference, wherever it is: path, JSON body, header, query.
    assert!(
        y.contains("path: \"/orders/{{data.accounts.user}}/{{data.products_2.code}}\""),
        "{y}"
    );
    assert!(y.contains("qty: \"{{data.products.qty}}\""), "{y}");
    assert!(y.contains("sku: \"{{data.products.sku}}\""), "{y}");
    assert!(
        y.contains("X-Api-Key: \"{{data.accounts.api_key}}\""),
        "{y}"
    );
    // The header-named set's variables stay plan variables (the import reads no file).
    assert!(y.contains("region: \"{{vars.region}}\""), "{y}");
    let notes: Vec<(NoteKind, &str)> = i
        .notes
        .iter()
        .filter(|n| n.element == "CSVDataSet")
        .map(|n| (n.kind, n.message.as_str()))
        .collect();
    assert_eq!(
        notes,
        [
            (
                NoteKind::Approximated,
                "`data.products`: after the last line JMeter gives the variables the value <EOF>; pacer starts again from the first row (mode: cycle)"
            ),
            (
                NoteKind::Approximated,
                "`data.products`: JMeter gives each thread group its own place in the file; pacer's cursor is shared by the whole test (mode: cycle)"
            ),
            (
                NoteKind::Untranslated,
                "`data.regions`: variableNames is empty, so the file's first line names the variables, and the import reads no file: write {{data.regions.COLUMN}} where the plan reads them"
            ),
            (
                NoteKind::Approximated,
                "`data.accounts`: the file \"/srv/jmeter/accounts.dat\" is an absolute path: kept, so the plan runs only where that file is"
            ),
            (
                NoteKind::Approximated,
                "`data.accounts`: JMeter gives each thread its own place in the file; pacer's cursor is shared by the whole test (mode: cycle)"
            ),
        ]
    );
    let names: Vec<&str> = plan.data.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(names, ["accounts", "products", "products_2", "regions"]);
    let products = plan.data.iter().find(|d| d.name == "products").unwrap();
    assert_eq!(products.layout.delimiter, '\t');
    assert!(products.layout.skip_first_line);
}

#[test]
fn a_csv_data_set_pacer_cannot_read_keeps_placeholders() {
    let jmx = data("csv_headers.jmx").replace(
        "<stringProp name=\"delimiter\">;</stringProp>",
        "<stringProp name=\"delimiter\">;;</stringProp>",
    );
    let i = jmeter::import(&jmx, &Default::default()).unwrap();
    let plan = load(&i.yaml);
    assert!(plan.data.is_empty());
    assert!(plan.variables.contains_key("user"), "{}", i.yaml);
    let note = i.notes.iter().find(|n| n.element == "CSVDataSet").unwrap();
    assert_eq!(note.kind, NoteKind::Untranslated);
    assert!(
        note.message
            .starts_with("its delimiter \";;\" is not one character pacer's CSV splits on: the variables user, pass are plan variables"),
        "{}",
        note.message
    );
}

#[test]
fn more_csv_data_sets_than_a_plan_has_sources_keep_placeholders() {
    let jmx = data("csv_headers.jmx");
    let start = jmx.find("<CSVDataSet ").unwrap();
    let end = jmx.find("</CSVDataSet>").unwrap() + "</CSVDataSet>\n<hashTree>\n</hashTree>\n".len();
    let set = &jmx[start..end];
    let many: String = (0..=pacer_plan::data::MAX_DATA_SOURCES)
        .map(|i| set.replace("users.csv", &format!("users{i}.csv")))
        .collect();
    let jmx = format!("{}{many}{}", &jmx[..start], &jmx[end..]);
    let i = jmeter::import(&jmx, &Default::default()).unwrap();
    let plan = load(&i.yaml);
    assert_eq!(plan.data.len(), pacer_plan::data::MAX_DATA_SOURCES);
    let note = i.notes.iter().find(|n| n.element == "CSVDataSet").unwrap();
    assert!(
        note.message
            .starts_with("a plan has at most 32 data sources:"),
        "{}",
        note.message
    );
}
