//! JSON from the command line: a run's inputs from `--inputs JSON|@FILE`
//! and `-i key=value` / `-i key:=json`, and payloads given inline or as
//! `@FILE` (`@-`: stdin). Every mistake is a usage error that quotes the
//! argument and says what was expected.

use std::io::Read;

use serde_json::{Map, Value};

use super::error::{Error, Result};

/// Inline JSON, or the JSON in `@FILE` (`@-` reads stdin). `what` names
/// the argument in errors.
pub fn json_arg(what: &str, arg: &str) -> Result<Value> {
    let (text, from) = match arg.strip_prefix('@') {
        Some("-") => {
            let mut s = String::new();
            std::io::stdin()
                .read_to_string(&mut s)
                .map_err(|e| Error::usage(format!("{what}: cannot read stdin: {e}")))?;
            (s, "stdin".to_owned())
        }
        Some(path) => (
            std::fs::read_to_string(path)
                .map_err(|e| Error::usage(format!("{what}: cannot read {path:?}: {e}")))?,
            format!("{path:?}"),
        ),
        None => (arg.to_owned(), "the argument".to_owned()),
    };
    serde_json::from_str(&text)
        .map_err(|e| Error::usage(format!("{what}: {from} is not JSON: {e}")))
}

/// A run's inputs: the `--inputs` object (or `{}`), then each `-i` on top,
/// later ones winning.
pub fn collect(inputs: Option<&str>, pairs: &[String]) -> Result<Value> {
    let mut obj = match inputs.map(|a| json_arg("--inputs", a)).transpose()? {
        None => Map::new(),
        Some(Value::Object(m)) => m,
        Some(other) => {
            return Err(Error::usage(format!(
                "--inputs must be a JSON object, not {}",
                flowcast_actors::workflow::json_kind(&other)
            )))
        }
    };
    for p in pairs {
        let (key, value) = pair(p)?;
        obj.insert(key, value);
    }
    Ok(Value::Object(obj))
}

/// `key=value` (a string) or `key:=json` (any JSON value).
fn pair(arg: &str) -> Result<(String, Value)> {
    let Some((key, value)) = arg.split_once('=') else {
        return Err(Error::usage(format!(
            "-i {arg:?}: expected key=value (a string) or key:=json"
        )));
    };
    let (key, value) = match key.strip_suffix(':') {
        Some(k) => (
            k,
            serde_json::from_str(value).map_err(|e| {
                Error::usage(format!("-i {arg:?}: the value after := is not JSON: {e}"))
            })?,
        ),
        None => (key, Value::String(value.to_owned())),
    };
    if key.is_empty() {
        return Err(Error::usage(format!("-i {arg:?}: the key is empty")));
    }
    Ok((key.to_owned(), value))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn pairs_are_strings_unless_typed() {
        let args = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            collect(
                None,
                &args(&["city=NYC", "zip=01234", "n:=3", "q=a=b", "e="])
            )
            .unwrap(),
            json!({"city": "NYC", "zip": "01234", "n": 3, "q": "a=b", "e": ""})
        );
        assert_eq!(
            collect(Some(r#"{"city":"Paris","x":1}"#), &args(&["city=NYC"])).unwrap(),
            json!({"city": "NYC", "x": 1})
        );
        assert_eq!(
            collect(None, &args(&["list:=[1,2]"])).unwrap(),
            json!({"list": [1, 2]})
        );
    }

    #[test]
    fn mistakes_are_usage_errors_that_quote_the_argument() {
        let one = |s: &str| collect(None, &[s.to_owned()]).unwrap_err().to_string();
        assert!(one("city").contains("expected key=value"));
        assert!(one("=x").contains("key is empty"));
        assert!(one("n:=nope").contains("not JSON"));
        let e = collect(Some("[1]"), &[]).unwrap_err().to_string();
        assert!(e.contains("must be a JSON object, not a list"), "{e}");
        assert!(collect(Some("{"), &[]).is_err());
        let e = collect(Some("@/nonexistent/x.json"), &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("cannot read"), "{e}");
    }
}
