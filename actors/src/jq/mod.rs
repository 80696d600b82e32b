//! jq filters, run by jaq (a maintained jq engine), for `transform` nodes and
//! for the URL and body of `http` nodes.
//!
//! Filters are user code, so they are sandboxed (DESIGN.md, "User code is
//! sandboxed") in three layers:
//!
//! 1. `scan`: before jaq sees a filter, its size and nesting are bounded
//!    by an iterative scan, since jaq's parser, compiler and tree drops
//!    recurse once per level;
//! 2. `engine`: the language is jq without what reaches outside the
//!    filter (`env`, `$ENV`, `input`, `halt`, `debug`, ...); a filter using
//!    one is refused at registration with a message naming it. Parsing and
//!    compiling run on a thread with [`COMPILE_STACK_BYTES`] of stack, which
//!    the deepest filter the scan allows cannot exhaust;
//! 3. [`pool`] and [`worker`]: evaluation happens in worker processes the
//!    daemon can kill at the node's deadline, whose crashes fail the node
//!    and nothing else.
//!
//! [`check`] is what validation calls, at registration and again at every
//! run start (the stored workflow is revalidated). The daemon never runs a
//! filter, so it keeps no compiled filters: it caches [`check`]'s verdicts
//! by source text, shared by every thread. Compiled filters are cached where
//! they run, in each worker (`worker::FilterCache`).

mod engine;
pub mod pool;
mod scan;
mod wire;
pub mod worker;

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

pub use pool::{EvalError, Pool, PoolConfig, WorkerCommand};
pub use scan::{MAX_DEPTH, MAX_FILTER_BYTES, MAX_NESTING};

/// Stack of the thread that parses and compiles a filter: the deepest trees
/// the scan allows take about 21 MiB of it in a debug build (measured; the
/// tests compile each at its limit), a quarter of that in release.
pub const COMPILE_STACK_BYTES: usize = 128 * 1024 * 1024;
/// Verdicts kept before the cache is cleared.
const VERDICT_CACHE_LIMIT: usize = 4096;

fn verdicts() -> std::sync::MutexGuard<'static, HashMap<String, Result<(), String>>> {
    static VERDICTS: OnceLock<Mutex<HashMap<String, Result<(), String>>>> = OnceLock::new();
    VERDICTS
        .get_or_init(Default::default)
        // A panic while holding the lock leaves a valid map.
        .lock()
        .unwrap_or_else(|e| e.into_inner())
}

/// Checks that a filter is within the limits, uses only what flowcast
/// filters may use, parses and compiles. The error says what is wrong (and
/// names a forbidden function).
pub fn check(code: &str) -> Result<(), String> {
    scan::precheck(code)?;
    if let Some(v) = verdicts().get(code) {
        return v.clone();
    }
    let owned = code.to_owned();
    let compiler = std::thread::Builder::new()
        .name("jq-compile".into())
        .stack_size(COMPILE_STACK_BYTES)
        .spawn(move || engine::compile(&owned).map(|_| ()))
        // Not a verdict on the filter: not cached.
        .map_err(|e| format!("the filter could not be checked now ({e}); try again"))?;
    let verdict = compiler
        .join()
        .unwrap_or_else(|_| Err("jaq failed on this filter".into()));
    let mut cache = verdicts();
    if cache.len() >= VERDICT_CACHE_LIMIT {
        cache.clear();
    }
    cache.insert(code.to_owned(), verdict.clone());
    verdict
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn run(code: &str, input: Value) -> Result<Value, String> {
        check(code)?;
        worker::eval_here(code, &input, 1 << 20)
    }

    #[test]
    fn runs_the_seeds_filters() {
        let inputs = json!({"inputs": {"city": "NYC"}, "nodes": {}});
        let out = run("{flights: [{to: .inputs.city, price: 120}]}", inputs).unwrap();
        assert_eq!(out, json!({"flights": [{"to": "NYC", "price": 120}]}));
        let inputs = json!({"inputs": {"city": "NYC"}, "nodes": {"search": out}});
        let out = run(
            "\"\\(.nodes.search.flights | length) flights to \\(.inputs.city)\"",
            inputs,
        )
        .unwrap();
        assert_eq!(out, json!("1 flights to NYC"));
    }

    #[test]
    fn ordinary_jq_still_works() {
        let cases = [
            ("reduce .[] as $x (0; . + $x)", json!([1, 2, 3]), json!(6)),
            ("[limit(3; range(100))]", json!(null), json!([0, 1, 2])),
            ("\"a\\(.x)b\"", json!({"x": [1]}), json!("a[1]b")),
            ("@base64", json!("hi"), json!("aGk=")),
            ("@base64d", json!("aGk="), json!("hi")),
            (
                "[.[] | test(\"^a.c$\")]",
                json!(["abc", "abd"]),
                json!([true, false]),
            ),
            (
                "map(select(. > 1)) | sort | first",
                json!([3, 2, 1]),
                json!(2),
            ),
            (
                "to_entries | from_entries",
                json!({"a": 1}),
                json!({"a": 1}),
            ),
            ("0 | todate", json!(null), json!("1970-01-01T00:00:00Z")),
            ("0 | gmtime | mktime", json!(null), json!(0)),
            ("now | type", json!(null), json!("number")),
            ("def env: 7; env", json!(null), json!(7)),
            ("try error(\"x\") catch .", json!(null), json!("x")),
            ("[paths]", json!({"a": [1]}), json!([["a"], ["a", 0]])),
            (
                "tojson | fromjson",
                json!({"a": [1, null]}),
                json!({"a": [1, null]}),
            ),
        ];
        for (f, input, want) in cases {
            assert_eq!(run(f, input), Ok(want), "{f}");
        }
    }

    #[test]
    fn errors_are_text() {
        assert_eq!(run("error(\"boom\")", json!(null)).unwrap_err(), "\"boom\"");
        let e = check("{a: 1").unwrap_err();
        assert!(e.starts_with("expected") && e.contains("byte"), "{e}");
        assert_eq!(
            check("nosuchfn(1)").unwrap_err(),
            "undefined filter nosuchfn/1"
        );
        assert_eq!(run("empty", json!(1)).unwrap(), json!(null));
    }

    #[test]
    fn every_outside_reaching_function_is_refused_by_name() {
        let cases = [
            ("env", "env"),
            ("env | {FLOWCAST_JWT_SECRET, FLOWCAST_REDIS_URL}", "env"),
            ("env.HOME", "env"),
            ("$ENV", "$ENV"),
            ("$ENV.PATH", "$ENV"),
            ("input", "input"),
            ("[inputs]", "inputs"),
            ("input_filename", "input_filename"),
            ("input_line_number", "input_line_number"),
            ("halt", "halt"),
            ("halt(0)", "halt"),
            ("halt_error", "halt_error"),
            ("\"bye\" | halt_error(1)", "halt_error"),
            ("debug", "debug"),
            ("debug(\"x\")", "debug"),
            ("debug_empty", "debug_empty"),
            ("stderr", "stderr"),
            ("stderr_empty", "stderr_empty"),
            ("localtime", "localtime"),
            ("strflocaltime(\"%H\")", "strflocaltime"),
            ("get_search_list", "get_search_list"),
            ("$__prog_args", "$__prog_args"),
            ("import \"x\" as $x; $x", "import"),
            ("include \"x\"; 1", "include"),
        ];
        for (f, name) in cases {
            let e = check(f).unwrap_err();
            assert!(
                e.starts_with(&format!("`{name}` is not available in flowcast filters:"))
                    && e.contains("cannot read the daemon's environment, files or process"),
                "{f}: {e}"
            );
        }
    }

    /// Every parser attack at the largest size the scan allows compiles on
    /// the compile thread without overflowing it; one step more is refused
    /// before parsing.
    #[test]
    fn parser_attacks_at_the_limits_compile_without_overflow() {
        fn nest(pre: &str, mid: &str, post: &str, n: usize) -> String {
            format!("{}{mid}{}", pre.repeat(n), post.repeat(n))
        }
        // (repeated prefix, middle, repeated suffix, the largest count the
        // limits should allow)
        let n = MAX_NESTING;
        let d = MAX_DEPTH - 1;
        let attacks = [
            ("[", "1", "]", n),
            ("(", "1", ")", n),
            ("{a:", "1", "}", n),
            (".[", "0", "]", n),
            ("\"\\(", "1", ")\"", n / 2),
            ("-", "1", "", d),
            ("try ", "1", "", d),
            (".a|", ".", "", d),
            ("1,", "1", "", d),
            ("1+", "1", "", d),
            ("def f: ", "1", "; f", (MAX_FILTER_BYTES - 1) / 10),
            ("label $x | ", "1", "", d / 2),
            (". as $x | ", "1", "", d / 2),
            ("reduce ", ".", " as $x (.; .)", MAX_FILTER_BYTES / 20),
            ("if 1 then ", "1", " else 1 end", d / 3),
        ];
        for (pre, mid, post, expected) in attacks {
            // The largest count the scan lets through.
            let (mut lo, mut hi) = (0, MAX_FILTER_BYTES);
            while lo < hi {
                let m = (lo + hi).div_ceil(2);
                if scan::precheck(&nest(pre, mid, post, m)).is_ok() {
                    lo = m;
                } else {
                    hi = m - 1;
                }
            }
            assert_eq!(lo, expected, "{pre}");
            let verdict = check(&nest(pre, mid, post, lo));
            assert!(parsed_fully(&verdict), "{pre} x{lo}: {verdict:?}");
            assert!(check(&nest(pre, mid, post, lo + 1)).is_err());
        }
        // The deepest mix: brackets of the costliest kind, with the rest of
        // the depth in prefix operators inside.
        let k = MAX_DEPTH - MAX_NESTING - 1;
        let mix = format!(
            "{}{}0{}",
            ".[".repeat(MAX_NESTING),
            "-".repeat(k),
            "]".repeat(MAX_NESTING)
        );
        assert!(check(&mix).is_ok());
        assert!(check(&format!("-{mix}")).is_err());
        // The reported attacks, full size: refused before parsing.
        for f in [
            nest("[", "1", "]", 800),
            nest("(", "1", ")", 1000),
            nest("-", "1", "", 3000),
            nest(".a|", ".", "", 20000),
        ] {
            assert!(check(&f).is_err());
        }
    }

    /// What the scan allows also evaluates in a worker without crashing it.
    #[test]
    fn the_deepest_allowed_filters_evaluate() {
        let f = format!("{}1", "-".repeat(MAX_DEPTH - 2));
        assert_eq!(run(&f, json!(null)), Ok(json!(1)));
        let f = format!("{}1{}", "[".repeat(MAX_NESTING), "]".repeat(MAX_NESTING));
        let e = run(&f, json!(null)).unwrap_err();
        assert!(e.contains("nested deeper than 100 levels"), "{e}");
        let f = format!("{}.", ".a|".repeat(MAX_DEPTH - 1));
        assert_eq!(run(&f, json!(null)), Ok(json!(null)));
    }

    /// Compiled, or refused by the compiler for an unbound name: parsed all
    /// the way down either way.
    fn parsed_fully(verdict: &Result<(), String>) -> bool {
        match verdict {
            Ok(()) => true,
            Err(e) => e.starts_with("undefined"),
        }
    }
}
