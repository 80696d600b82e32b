//! The restricted jq language: jaq's standard library minus everything that
//! reaches outside the filter, the compiler, and evaluation of one filter on
//! one input.
//!
//! What is left out, read from jaq-core 3, jaq-std 3 and jaq-json 2:
//!
//! | name | why |
//! |---|---|
//! | `env`, `$ENV` | the daemon's environment (its secrets) |
//! | `input`, `inputs`, `input_filename`, `input_line_number` | other inputs, files |
//! | `halt`, `halt_error` | `jaq_core::unwrap_valr` turns them into `process::exit` |
//! | `debug`, `stderr` (and their natives `debug_empty`, `stderr_empty`) | the daemon's log and stderr |
//! | `localtime`, `strflocaltime` | the daemon's time zone (`TZ`, `/etc/localtime`) |
//! | `get_search_list`, `get_prog_origin`, `get_jq_origin`, `$__prog_args` | jq's view of the process and its files |
//! | `module`, `import`, `include` | module and data files (refused by the scan) |
//!
//! jaq does not define some of these at all; they are listed so that a
//! filter using one is told why, not merely "undefined". Everything else,
//! including `now`, `gmtime`, `mktime`, `strftime` (UTC), regexes, formats
//! and math, stays. A filter may define its own `env` or `debug`: that is
//! its own code, not the daemon's.
//!
//! Nothing here calls `unwrap_valr` (whose `halt` branch exits the process);
//! an exception that is not an error is reported as text.

use jaq_core::load::{Arena, File, Loader};
use jaq_core::{data, Compiler, Ctx, Vars};
use jaq_json::Val;

/// A compiled filter.
pub type Filter = jaq_core::Filter<data::JustLut<Val>>;

/// Natives of jaq-std left out.
const FORBIDDEN_NATIVES: &[&str] = &[
    "env",
    "halt",
    "debug_empty",
    "stderr_empty",
    "localtime",
    "strflocaltime",
];
/// Definitions of jaq-std left out (they call the natives above).
const FORBIDDEN_DEFS: &[&str] = &["halt", "halt_error", "debug", "stderr"];

/// Names a filter may not use, each with why (completing "they cannot ...").
const FORBIDDEN: &[(&str, &str)] = &[
    ("env", "read the daemon's environment"),
    ("$ENV", "read the daemon's environment"),
    ("input", "read inputs other than their own (`.`)"),
    ("inputs", "read inputs other than their own (`.`)"),
    ("input_filename", "read the daemon's files"),
    ("input_line_number", "read the daemon's files"),
    (
        "halt",
        "stop the daemon's process; use error(\"...\") to fail the node",
    ),
    (
        "halt_error",
        "stop the daemon's process; use error(\"...\") to fail the node",
    ),
    ("debug", "write to the daemon's log"),
    ("debug_empty", "write to the daemon's log"),
    ("stderr", "write to the daemon's stderr"),
    ("stderr_empty", "write to the daemon's stderr"),
    ("localtime", "read the daemon's time zone; use gmtime (UTC)"),
    (
        "strflocaltime",
        "read the daemon's time zone; use strftime (UTC)",
    ),
    ("get_search_list", "read the daemon's files"),
    ("get_prog_origin", "read the daemon's files"),
    ("get_jq_origin", "read the daemon's files"),
    ("$__prog_args", "read the daemon's process"),
    ("module", "load modules or read files"),
    ("import", "load modules or read files"),
    ("include", "load modules or read files"),
];

/// The refusal of a forbidden name.
pub(crate) fn forbidden(name: &str) -> String {
    let why = FORBIDDEN
        .iter()
        .find(|(n, _)| *n == name)
        .map_or("reach outside the filter", |(_, why)| why);
    format!(
        "`{name}` is not available in flowcast filters: they cannot read the daemon's \
         environment, files or process (they cannot {why})"
    )
}

fn is_forbidden(name: &str) -> bool {
    FORBIDDEN.iter().any(|(n, _)| *n == name)
}

/// Parses and compiles a filter with the restricted library. Recursive:
/// run it only on a thread with [`super::COMPILE_STACK_BYTES`] of stack,
/// after [`super::scan::precheck`].
pub fn compile(code: &str) -> Result<Filter, String> {
    let defs = jaq_core::defs()
        .chain(jaq_std::defs().filter(|d| !FORBIDDEN_DEFS.contains(&d.name)))
        .chain(jaq_json::defs());
    let funs = jaq_core::funs()
        .chain(jaq_std::funs().filter(|(name, _, _)| !FORBIDDEN_NATIVES.contains(name)))
        .chain(jaq_json::funs());
    let arena = Arena::default();
    let modules = Loader::new(defs)
        .load(&arena, File { code, path: () })
        .map_err(|errs| {
            errs.into_iter()
                .flat_map(|(_, e)| describe_load_error(code, e))
                .collect::<Vec<_>>()
                .join("; ")
        })?;
    Compiler::default()
        .with_funs(funs)
        .compile(modules)
        .map_err(|errs| {
            let undefined: Vec<_> = errs.into_iter().flat_map(|(_, es)| es).collect();
            if let Some((name, _)) = undefined.iter().find(|(name, _)| is_forbidden(name)) {
                return forbidden(name);
            }
            undefined
                .into_iter()
                .map(|(name, undef)| match undef {
                    jaq_core::compile::Undefined::Filter(arity) => {
                        format!("undefined filter {name}/{arity}")
                    }
                    other => format!("undefined {} {name}", other.as_str()),
                })
                .collect::<Vec<_>>()
                .join("; ")
        })
}

/// Byte offset of `rest` (a suffix of `code`) in `code`.
fn offset(code: &str, rest: &str) -> usize {
    code.len().saturating_sub(rest.len())
}

fn describe_load_error(code: &str, e: jaq_core::load::Error<&str>) -> Vec<String> {
    use jaq_core::load::Error as E;
    match e {
        E::Io(errs) => errs.into_iter().map(|(p, m)| format!("{p}: {m}")).collect(),
        E::Lex(errs) => errs
            .into_iter()
            .map(|(exp, rest)| format!("expected {} at byte {}", exp.as_str(), offset(code, rest)))
            .collect(),
        E::Parse(errs) => errs
            .into_iter()
            .map(|(exp, found)| {
                format!("expected {} at byte {}", exp.as_str(), offset(code, found))
            })
            .collect(),
    }
}

/// Runs a filter and returns its first output (`None` if it yields
/// nothing). An error, including jq's `error("...")`, is returned as text.
pub fn eval_first(filter: &Filter, input: Val) -> Result<Option<Val>, String> {
    let ctx = Ctx::<data::JustLut<Val>>::new(&filter.lut, Vars::new([]));
    let mut out = filter.id.run((ctx, input));
    match out.next() {
        None => Ok(None),
        Some(Ok(v)) => Ok(Some(v)),
        Some(Err(exn)) => Err(match exn.get_err() {
            Ok(e) => e.to_string(),
            Err(_) => "the filter stopped without a value or an error".into(),
        }),
    }
}

/// True when arrays and objects nest more than `limit` levels deep in `v`,
/// measured without recursion (the value may be far deeper than any stack).
pub fn depth_exceeds(v: &Val, limit: usize) -> bool {
    let mut stack: Vec<(&Val, usize)> = vec![(v, 1)];
    while let Some((v, d)) = stack.pop() {
        let children: Box<dyn Iterator<Item = &Val>> = match v {
            Val::Arr(a) => Box::new(a.iter()),
            Val::Obj(o) => Box::new(o.iter().flat_map(|(k, v)| [k, v])),
            _ => continue,
        };
        if d > limit {
            return true;
        }
        let nested = children.filter(|c| matches!(c, Val::Arr(_) | Val::Obj(_)));
        stack.extend(nested.map(|c| (c, d + 1)));
    }
    false
}
