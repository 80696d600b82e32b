//! jq filters, run by jaq (a maintained jq engine), for `transform` nodes and
//! for the URL and body of `http` nodes.
//!
//! Compiling a filter costs far more than running it, so compiled filters are
//! cached per thread by source text (run actors all live on one arbiter, and
//! jaq's values are not `Send`). Input and output cross the boundary as
//! `serde_json::Value`.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use jaq_core::load::{Arena, File, Loader};
use jaq_core::{data, unwrap_valr, Compiler, Ctx, Vars};
use jaq_json::Val;
use serde_json::Value;

type Filter = jaq_core::Filter<data::JustLut<Val>>;

/// Compiled filters kept per thread before the cache is cleared.
const CACHE_LIMIT: usize = 4096;

thread_local! {
    static CACHE: RefCell<HashMap<String, Rc<Filter>>> = RefCell::new(HashMap::new());
}

fn compile(code: &str) -> Result<Filter, String> {
    let defs = jaq_core::defs()
        .chain(jaq_std::defs())
        .chain(jaq_json::defs());
    let funs = jaq_core::funs()
        .chain(jaq_std::funs())
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
            errs.into_iter()
                .flat_map(|(_, es)| {
                    es.into_iter().map(|(name, undef)| match undef {
                        jaq_core::compile::Undefined::Filter(arity) => {
                            format!("undefined filter {name}/{arity}")
                        }
                        other => format!("undefined {} {name}", other.as_str()),
                    })
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

fn cached(code: &str) -> Result<Rc<Filter>, String> {
    CACHE.with(|c| {
        if let Some(f) = c.borrow().get(code) {
            return Ok(f.clone());
        }
        let f = Rc::new(compile(code)?);
        let mut c = c.borrow_mut();
        if c.len() >= CACHE_LIMIT {
            c.clear();
        }
        c.insert(code.to_owned(), f.clone());
        Ok(f)
    })
}

/// Checks that a filter parses and compiles.
pub fn check(code: &str) -> Result<(), String> {
    cached(code).map(|_| ())
}

/// Runs a filter and returns its first output. A filter that yields nothing
/// gives `null`; an error (including jq's `error("...")`) is returned as text.
pub fn run(code: &str, input: &Value) -> Result<Value, String> {
    let filter = cached(code)?;
    let input: Val = serde_json::from_value(input.clone()).map_err(|e| e.to_string())?;
    let ctx = Ctx::<data::JustLut<Val>>::new(&filter.lut, Vars::new([]));
    let mut out = filter.id.run((ctx, input)).map(unwrap_valr);
    match out.next() {
        None => Ok(Value::Null),
        Some(Err(e)) => Err(e.to_string()),
        Some(Ok(v)) => serde_json::from_str(&v.to_string())
            .map_err(|e| format!("filter output is not JSON ({e}): {v}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn runs_the_seeds_filters() {
        let inputs = json!({"inputs": {"city": "NYC"}, "nodes": {}});
        let out = run("{flights: [{to: .inputs.city, price: 120}]}", &inputs).unwrap();
        assert_eq!(out, json!({"flights": [{"to": "NYC", "price": 120}]}));
        let inputs = json!({"inputs": {"city": "NYC"}, "nodes": {"search": out}});
        let out = run(
            "\"\\(.nodes.search.flights | length) flights to \\(.inputs.city)\"",
            &inputs,
        )
        .unwrap();
        assert_eq!(out, json!("1 flights to NYC"));
    }

    #[test]
    fn errors_are_text() {
        assert_eq!(
            run("error(\"boom\")", &json!(null)).unwrap_err(),
            "\"boom\""
        );
        let e = check("{a: 1").unwrap_err();
        assert!(e.starts_with("expected") && e.contains("byte"), "{e}");
        assert!(check("nosuchfn(1)").is_err());
        assert_eq!(run("empty", &json!(1)).unwrap(), json!(null));
    }
}
