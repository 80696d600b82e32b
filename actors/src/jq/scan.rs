//! Pre-parse limits: what a filter may look like before jaq is allowed to
//! parse it.
//!
//! jaq's lexer, parser and compiler are recursive descent, and so is the
//! dropping of their trees: every bracket, every prefix keyword (`-`, `try`,
//! `reduce`, `def`, `if`, `label`, ...) and every binary operator of a chain
//! (`.a | .a | ...`, `1, 1, ...`) is a level of native stack. A 1.6 KB
//! `[[[[...]]]]` overflowed a worker thread's stack and took the daemon
//! with it. So before any of that code runs, [`precheck`] bounds the filter
//! with an iterative scan that mirrors jaq's lexer exactly (the same
//! whitespace, comments, strings, escapes and interpolations, and the same
//! places where lexing stops), so that nothing jaq would lex as code can
//! hide from the count:
//!
//! - size: at most [`MAX_FILTER_BYTES`];
//! - nesting: open brackets, parentheses, braces, strings and string
//!   interpolations at most [`MAX_NESTING`] deep;
//! - depth: a bound on the depth of the syntax tree, where each bracket level
//!   counts 1 plus every operator, comma and keyword in it (they all nest:
//!   `a | b | c` is `a | (b | c)`), at most [`MAX_DEPTH`].
//!
//! Parsing then happens on a thread whose stack holds the deepest tree these
//! limits allow, with room to spare (see `COMPILE_STACK_BYTES` and the
//! tests that compile every attack at the largest size allowed).
//!
//! The scan also refuses `module`, `import` and `include` directives:
//! jq modules are files, and a data import (`import "f" as $x;`) would
//! compile into a variable nothing provides.

/// Longest filter accepted, in bytes.
pub const MAX_FILTER_BYTES: usize = 16 * 1024;
/// Deepest nesting of brackets, parentheses, braces, strings and
/// interpolations accepted.
pub const MAX_NESTING: usize = 256;
/// Deepest syntax tree accepted, counting nesting plus the operators,
/// commas and keywords at each level.
pub const MAX_DEPTH: usize = 2048;

/// Keywords that open a nested term in jaq's parser (or join two, like an
/// operator).
const KEYWORDS: &[&str] = &[
    "def", "if", "then", "elif", "else", "try", "catch", "reduce", "foreach", "label", "as", "and",
    "or",
];
/// Module directives: allowed by jq only before the filter's body.
const DIRECTIVES: &[&str] = &["module", "import", "include"];

/// First characters of operator tokens (jaq's `hd_op`).
fn hd_op(c: char) -> bool {
    "|=!<>+-*/%".contains(c)
}

/// Further characters of operator tokens (jaq's `tl_op`).
fn tl_op(c: char) -> bool {
    hd_op(c) && c != '-'
}

fn ident_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_'
}

fn ident_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// One open level of the lexer: a string, or a block of code closed by
/// `close` (the root block has none).
struct Frame {
    close: Option<char>,
    string: bool,
    /// Operators, commas and keywords seen directly in this level.
    ops: usize,
    /// Deepest tree bound among the levels nested in this one.
    max_child: usize,
}

impl Frame {
    fn code(close: Option<char>) -> Self {
        Self {
            close,
            string: false,
            ops: 0,
            max_child: 0,
        }
    }

    fn string() -> Self {
        Self {
            close: None,
            string: true,
            ops: 0,
            max_child: 0,
        }
    }
}

/// The scan's state: the input still to lex and the open levels.
struct Scan<'a> {
    i: &'a str,
    stack: Vec<Frame>,
}

impl<'a> Scan<'a> {
    /// Whitespace and comments, as jaq's `space`: a comment runs to the end
    /// of its line, and on while lines end with an odd number of backslashes.
    fn space(&mut self) {
        loop {
            self.i = self.i.trim_start();
            match self.i.strip_prefix('#') {
                Some(comment) => self.i = comment,
                None => break,
            }
            loop {
                let (before, after) = self.i.split_once('\n').unwrap_or((self.i, ""));
                let before = before.strip_suffix('\r').unwrap_or(before);
                self.i = after;
                if before.chars().rev().take_while(|c| *c == '\\').count() % 2 == 0 {
                    break;
                }
            }
        }
    }

    fn skip(&mut self, bytes: usize) {
        self.i = &self.i[bytes..];
    }

    fn trim(&mut self, f: impl FnMut(char) -> bool) {
        self.i = self.i.trim_start_matches(f);
    }

    /// `[a-zA-Z_][a-zA-Z0-9_]*`, consuming nothing if it does not start so.
    fn ident1(&mut self) {
        if let Some(rest) = self.i.strip_prefix(ident_start) {
            self.i = rest;
            self.trim(ident_char);
        }
    }

    /// A decimal with optional fraction and exponent (after its first digit).
    fn num(&mut self) {
        self.trim(|c| c.is_ascii_digit());
        if let Some(rest) = self.i.strip_prefix('.') {
            self.i = rest;
            self.trim(|c| c.is_ascii_digit());
        }
        if let Some(rest) = self.i.strip_prefix(['e', 'E']) {
            self.i = rest.strip_prefix(['+', '-']).unwrap_or(rest);
            self.trim(|c| c.is_ascii_digit());
        }
    }

    fn top(&mut self) -> &mut Frame {
        // The root frame is popped only when the scan ends.
        let last = self.stack.len() - 1;
        &mut self.stack[last]
    }

    fn count_op(&mut self) {
        self.top().ops += 1;
    }

    fn open(&mut self, f: Frame) -> Result<(), String> {
        self.stack.push(f);
        let nesting = self.stack.len() - 1;
        if nesting > MAX_NESTING {
            return Err(format!(
                "the filter nests brackets, strings and interpolations more than \
                 {MAX_NESTING} levels deep; the limit is {MAX_NESTING}"
            ));
        }
        Ok(())
    }

    /// Closes the innermost level, folding its tree bound into its parent's.
    /// Returns the bound when the root closes.
    fn close(&mut self) -> Option<usize> {
        let f = self.stack.pop()?;
        let depth = 1 + f.ops + f.max_child;
        match self.stack.last_mut() {
            Some(parent) => {
                parent.max_child = parent.max_child.max(depth);
                None
            }
            None => Some(depth),
        }
    }

    /// One step inside a string: content, an escape, or its end.
    fn string_step(&mut self) -> Result<bool, String> {
        self.trim(|c| c != '\\' && c != '"');
        let mut chars = self.i.chars();
        match chars.next() {
            None => return Ok(false),
            Some('"') => {
                self.skip(1);
                self.close();
            }
            Some(_) => {
                // A backslash. `\(` opens an interpolation; any other escape
                // is one character (a valid `\uXXXX`'s digits, or whatever
                // follows an invalid escape, are string content to jaq too).
                self.skip(1);
                match self.i.chars().next() {
                    Some('(') => {
                        self.skip(1);
                        self.open(Frame::code(Some(')')))?;
                    }
                    Some(c) => self.skip(c.len_utf8()),
                    None => {}
                }
            }
        }
        Ok(true)
    }

    /// One token of code, or the end of the current block. Returns false when
    /// lexing ends.
    fn code_step(&mut self, first_token: &mut bool) -> Result<bool, String> {
        self.space();
        let mut chars = self.i.chars();
        let Some(c) = chars.next() else {
            return Ok(false);
        };
        let was_first = std::mem::replace(first_token, false);
        match c {
            c if ident_start(c) => {
                let start = self.i;
                self.skip(1);
                self.trim(ident_char);
                if let Some(rest) = self.i.strip_prefix("::") {
                    self.i = rest.strip_prefix(['@', '$']).unwrap_or(rest);
                    self.ident1();
                }
                let word = &start[..start.len() - self.i.len()];
                if was_first && DIRECTIVES.contains(&word) {
                    return Err(super::engine::forbidden(word));
                }
                if KEYWORDS.contains(&word) {
                    self.count_op();
                }
            }
            '$' | '@' => {
                self.skip(1);
                self.ident1();
            }
            '0'..='9' => {
                self.skip(1);
                self.num();
            }
            c if hd_op(c) => {
                self.skip(1);
                self.trim(tl_op);
                self.count_op();
            }
            '.' => match chars.next() {
                Some('.') => self.skip(2),
                Some(c) if ident_start(c) => {
                    self.skip(2);
                    self.trim(ident_char);
                }
                _ => self.skip(1),
            },
            ',' => {
                self.skip(1);
                self.count_op();
            }
            ':' | ';' | '?' => self.skip(1),
            '"' => {
                self.skip(1);
                self.open(Frame::string())?;
            }
            '(' | '[' | '{' => {
                self.skip(1);
                let close = match c {
                    '(' => ')',
                    '[' => ']',
                    _ => '}',
                };
                self.open(Frame::code(Some(close)))?;
            }
            _ => {
                // Not a token: the current block ends here (consuming its
                // closing character if this is it), and at the root,
                // lexing ends.
                if self.stack.len() == 1 {
                    return Ok(false);
                }
                if Some(c) == self.top().close {
                    self.skip(c.len_utf8());
                }
                self.close();
            }
        }
        Ok(true)
    }
}

/// Checks a filter's size and nesting before it is parsed.
pub fn precheck(code: &str) -> Result<(), String> {
    if code.len() > MAX_FILTER_BYTES {
        return Err(format!(
            "the filter is {} bytes; the limit is {MAX_FILTER_BYTES} bytes",
            code.len()
        ));
    }
    let mut scan = Scan {
        i: code,
        stack: vec![Frame::code(None)],
    };
    let mut first_token = true;
    loop {
        let more = if scan.top().string {
            scan.string_step()?
        } else {
            scan.code_step(&mut first_token)?
        };
        if !more {
            break;
        }
    }
    let mut depth = 0;
    while !scan.stack.is_empty() {
        if let Some(d) = scan.close() {
            depth = d;
        }
    }
    if depth > MAX_DEPTH {
        return Err(format!(
            "the filter is nested too deeply: about {depth} levels of brackets, operators \
             and keywords (`|`, `,`, `-`, `try`, `def`, `if`, ...); the limit is {MAX_DEPTH}"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn depth_of(code: &str) -> usize {
        let mut scan = Scan {
            i: code,
            stack: vec![Frame::code(None)],
        };
        let mut first = true;
        loop {
            let more = if scan.top().string {
                scan.string_step().unwrap()
            } else {
                scan.code_step(&mut first).unwrap()
            };
            if !more {
                break;
            }
        }
        let mut depth = 0;
        while !scan.stack.is_empty() {
            if let Some(d) = scan.close() {
                depth = d;
            }
        }
        depth
    }

    #[test]
    fn size_limit() {
        let ok = format!("{}1", " ".repeat(MAX_FILTER_BYTES - 1));
        assert!(precheck(&ok).is_ok());
        let e = precheck(&format!("{ok} ")).unwrap_err();
        assert!(e.contains("16385 bytes") && e.contains("16384"), "{e}");
    }

    #[test]
    fn nesting_limit_counts_every_kind_of_bracket() {
        for (open, close) in [("[", "]"), ("(", ")"), ("{a:", "}"), ("\"\\(", ")\"")] {
            let levels = if open.starts_with('"') {
                MAX_NESTING / 2
            } else {
                MAX_NESTING
            };
            let ok = format!("{}1{}", open.repeat(levels), close.repeat(levels));
            assert!(precheck(&ok).is_ok(), "{open}: {:?}", precheck(&ok));
            let bad = format!("{}1{}", open.repeat(levels + 1), close.repeat(levels + 1));
            let e = precheck(&bad).unwrap_err();
            assert!(e.contains("256 levels"), "{e}");
        }
        // Unclosed brackets count just the same.
        assert!(precheck(&"[".repeat(MAX_NESTING + 1)).is_err());
    }

    #[test]
    fn operator_and_keyword_chains_count_as_depth() {
        assert_eq!(depth_of("1"), 1);
        assert_eq!(depth_of(".a | .b | .c"), 3);
        assert_eq!(depth_of("[1, 2, 3]"), 4);
        assert_eq!(depth_of("- - - 1"), 4);
        assert_eq!(depth_of("try try 1"), 3);
        assert_eq!(depth_of("def f: def g: 1; g; f"), 3);
        assert_eq!(depth_of(". as $x | $x"), 3);
        // A chain left of a nested level still counts above it.
        assert_eq!(depth_of("(1 + (2)) + 3 + 4"), 6);
        for unit in ["-", ".a|", "try ", "1,"] {
            let ok = format!("{}1", unit.repeat(MAX_DEPTH - 1));
            assert!(precheck(&ok).is_ok(), "{unit}");
            let bad = format!("{}1", unit.repeat(MAX_DEPTH));
            let e = precheck(&bad).unwrap_err();
            assert!(e.contains("nested too deeply"), "{e}");
        }
    }

    #[test]
    fn nothing_hides_in_strings_or_comments() {
        // Brackets inside strings and comments are not code...
        let s = format!("\"{}\"", "[".repeat(1000));
        assert!(precheck(&s).is_ok());
        let c = format!("1 # {}\n", "[".repeat(1000));
        assert!(precheck(&c).is_ok());
        // ...but a comment line ending in a backslash continues, as in jaq,
        // and what follows its end is code again.
        let deep = "[".repeat(MAX_NESTING + 1);
        assert!(precheck(&format!("1 # x\\\ny\n{deep}")).is_err());
        // An escaped quote does not end a string; an interpolation is code.
        assert!(precheck(&format!("\"\\\" {deep}\"")).is_ok());
        assert!(precheck(&format!("\"\\({deep}")).is_err());
        // An invalid \u escape resumes where jaq resumes: at the quote.
        assert!(precheck(&format!("\"\\u1\" {deep}")).is_err());
        // A mismatched closer in an interpolation ends it: the rest is the
        // string again, then code.
        assert!(precheck(&format!("\"\\(( ] \" {deep}")).is_err());
        // Unicode whitespace is whitespace to jaq.
        assert!(precheck(&format!("1 |\u{a0}{deep}")).is_err());
    }

    #[test]
    fn module_directives_are_refused() {
        for f in ["import \"a\" as $a; $a", "include \"a\"; 1", "module {}; 1"] {
            let e = precheck(f).unwrap_err();
            assert!(e.contains("is not available in flowcast filters"), "{e}");
        }
        assert!(precheck("{import: 1} | .import").is_ok());
    }
}
