//! Static checks of a CEL expression before any record arrives: syntax,
//! unknown variables and functions, and obvious type errors (comparing a
//! string with a number, a non-boolean condition). A coarse type is inferred
//! bottom-up; anything that depends on record content is `dyn` and passes.

use cel::common::ast::{EntryExpr, Expr, LiteralValue};
use cel::{IdedExpr, Program};
use millrace_crds::Format;

/// The coarse types the checker tracks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CelType {
    Bool,
    Int,
    Uint,
    Double,
    String,
    Bytes,
    List,
    Map,
    Null,
    Timestamp,
    Duration,
    /// Unknown until a record is seen (e.g. a JSON field).
    Dyn,
}

impl CelType {
    pub fn can_be(self, other: CelType) -> bool {
        self == other || self == CelType::Dyn
    }

    fn is_numeric(self) -> bool {
        matches!(self, CelType::Int | CelType::Uint | CelType::Double)
    }

    fn known(self) -> bool {
        self != CelType::Dyn
    }
}

impl std::fmt::Display for CelType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match self {
            CelType::Bool => "a bool",
            CelType::Int => "an int",
            CelType::Uint => "a uint",
            CelType::Double => "a double",
            CelType::String => "a string",
            CelType::Bytes => "bytes",
            CelType::List => "a list",
            CelType::Map => "a map",
            CelType::Null => "null",
            CelType::Timestamp => "a timestamp",
            CelType::Duration => "a duration",
            CelType::Dyn => "a value known only at run time",
        };
        f.write_str(name)
    }
}

/// Functions and macros an expression may call, each with its result type.
/// A unit test evaluates every one in the runtime's CEL environment, so the
/// list cannot promise what the runtime cannot do.
pub const SUPPORTED_FUNCTIONS: &[(&str, CelType)] = &[
    ("size", CelType::Int),
    ("int", CelType::Int),
    ("uint", CelType::Uint),
    ("double", CelType::Double),
    ("string", CelType::String),
    ("bytes", CelType::Bytes),
    ("bool", CelType::Bool),
    ("dyn", CelType::Dyn),
    ("type", CelType::Dyn),
    ("contains", CelType::Bool),
    ("startsWith", CelType::Bool),
    ("endsWith", CelType::Bool),
    ("matches", CelType::Bool),
];

/// The variables every expression sees, typed by the source's formats.
pub struct Variables {
    pub key: Format,
    pub value: Format,
    /// Joined values (`join.as`) and how each reads.
    pub joined: Vec<(String, Format)>,
}

pub const VARIABLE_NAMES: &[&str] = &[
    "key",
    "value",
    "headers",
    "topic",
    "partition",
    "offset",
    "timestamp",
];

impl Variables {
    fn type_of(&self, name: &str) -> Option<CelType> {
        let of = |f: Format| match f {
            Format::Json => CelType::Dyn,
            Format::String => CelType::String,
            Format::Bytes => CelType::Bytes,
        };
        Some(match name {
            "key" => of(self.key),
            "value" => of(self.value),
            "headers" => CelType::Map,
            "topic" => CelType::String,
            "partition" | "offset" | "timestamp" => CelType::Int,
            _ => {
                return self
                    .joined
                    .iter()
                    .find(|(n, _)| n == name)
                    .map(|(_, f)| of(*f))
            }
        })
    }
}

pub struct ParseFailure {
    pub position: Option<(usize, usize)>,
    pub message: String,
}

pub fn parse(source: &str) -> Result<Program, ParseFailure> {
    Program::compile(source).map_err(|errors| {
        let first = errors.errors.first();
        ParseFailure {
            position: first.map(|e| (e.pos.0.max(1) as usize, e.pos.1.max(1) as usize)),
            message: first
                .map(|e| e.msg.clone())
                .unwrap_or_else(|| errors.to_string()),
        }
    })
}

pub struct Checked {
    pub ty: CelType,
    pub problems: Vec<String>,
}

pub fn check(program: &Program, variables: &Variables) -> Checked {
    let mut checker = Checker {
        variables,
        scope: Vec::new(),
        problems: Vec::new(),
    };
    let ty = checker.walk(program.expression());
    checker.problems.dedup();
    Checked {
        ty,
        problems: checker.problems,
    }
}

struct Checker<'a> {
    variables: &'a Variables,
    /// Names bound by enclosing comprehensions (`x` in `list.all(x, ...)`).
    scope: Vec<String>,
    problems: Vec<String>,
}

impl Checker<'_> {
    fn walk(&mut self, e: &IdedExpr) -> CelType {
        match &e.expr {
            Expr::Unspecified | Expr::Struct(_) => CelType::Dyn,
            Expr::Literal(l) => match l {
                LiteralValue::Boolean(_) => CelType::Bool,
                LiteralValue::Bytes(_) => CelType::Bytes,
                LiteralValue::Double(_) => CelType::Double,
                LiteralValue::Int(_) => CelType::Int,
                LiteralValue::UInt(_) => CelType::Uint,
                LiteralValue::String(_) => CelType::String,
                LiteralValue::Null => CelType::Null,
            },
            Expr::Ident(name) => self.ident(name),
            Expr::List(list) => {
                for element in &list.elements {
                    self.walk(element);
                }
                CelType::List
            }
            Expr::Map(map) => {
                for entry in &map.entries {
                    match &entry.expr {
                        EntryExpr::MapEntry(m) => {
                            self.walk(&m.key);
                            self.walk(&m.value);
                        }
                        EntryExpr::StructField(f) => {
                            self.walk(&f.value);
                        }
                    }
                }
                CelType::Map
            }
            Expr::Select(select) => {
                let operand = self.walk(&select.operand);
                if select.test {
                    return CelType::Bool;
                }
                if operand.known() && operand != CelType::Map {
                    self.problems
                        .push(format!("{operand} has no field '{}'", select.field));
                }
                CelType::Dyn
            }
            Expr::Comprehension(c) => {
                self.walk(&c.iter_range);
                let bound = 2 + usize::from(c.iter_var2.is_some());
                self.scope.push(c.iter_var.clone());
                self.scope.extend(c.iter_var2.clone());
                self.scope.push(c.accu_var.clone());
                self.walk(&c.accu_init);
                self.walk(&c.loop_cond);
                self.walk(&c.loop_step);
                let ty = self.walk(&c.result);
                self.scope.truncate(self.scope.len() - bound);
                ty
            }
            Expr::Call(call) => {
                let target = call.target.as_ref().map(|t| self.walk(t));
                let args: Vec<CelType> = call.args.iter().map(|a| self.walk(a)).collect();
                self.call(&call.func_name, target, &args)
            }
        }
    }

    fn ident(&mut self, name: &str) -> CelType {
        if name.starts_with('@') || self.scope.iter().any(|s| s == name) {
            return CelType::Dyn;
        }
        match self.variables.type_of(name) {
            Some(t) => t,
            None => {
                let joined = self.variables.joined.iter().map(|(n, _)| n.as_str());
                let names: Vec<&str> = VARIABLE_NAMES.iter().copied().chain(joined).collect();
                self.problems.push(format!(
                    "unknown variable '{name}' (expressions see {})",
                    names.join(", ")
                ));
                CelType::Dyn
            }
        }
    }

    fn call(&mut self, func: &str, target: Option<CelType>, args: &[CelType]) -> CelType {
        let arg = |i: usize| args.get(i).copied().unwrap_or(CelType::Dyn);
        match func {
            "_&&_" | "_||_" | "!_" => {
                if let Some(bad) = args.iter().find(|t| !t.can_be(CelType::Bool)) {
                    let op = func.trim_matches('_');
                    self.problems.push(format!(
                        "the operands of '{op}' must be true or false, not {bad}"
                    ));
                }
                CelType::Bool
            }
            "@not_strictly_false" | "@in" | "_==_" | "_!=_" => CelType::Bool,
            "_<_" | "_<=_" | "_>_" | "_>=_" => {
                let (a, b) = (arg(0), arg(1));
                let comparable =
                    !a.known() || !b.known() || a == b || (a.is_numeric() && b.is_numeric());
                if !comparable {
                    self.problems.push(format!("cannot compare {a} with {b}"));
                }
                CelType::Bool
            }
            "_+_" => self.arithmetic(
                "+",
                arg(0),
                arg(1),
                &[CelType::String, CelType::Bytes, CelType::List],
            ),
            "_-_" | "_*_" | "_/_" | "_%_" => {
                self.arithmetic(func.trim_matches('_'), arg(0), arg(1), &[])
            }
            "-_" => {
                let a = arg(0);
                if a.known() && !a.is_numeric() {
                    self.problems.push(format!("cannot negate {a}"));
                }
                a
            }
            "_?_:_" => {
                if !arg(0).can_be(CelType::Bool) {
                    self.problems.push(format!(
                        "the condition of '?:' must be true or false, not {}",
                        arg(0)
                    ));
                }
                if arg(1) == arg(2) {
                    arg(1)
                } else {
                    CelType::Dyn
                }
            }
            "_[_]" => CelType::Dyn,
            _ => match SUPPORTED_FUNCTIONS.iter().find(|(name, _)| *name == func) {
                Some((name, ty)) => {
                    let string_method =
                        matches!(*name, "contains" | "startsWith" | "endsWith" | "matches");
                    if let Some(t) =
                        target.filter(|t| string_method && t.known() && *t != CelType::String)
                    {
                        self.problems
                            .push(format!("'{name}' applies to a string, not {t}"));
                    }
                    *ty
                }
                None => {
                    self.problems.push(format!("unknown function '{func}'"));
                    CelType::Dyn
                }
            },
        }
    }

    /// `+` also joins strings, bytes and lists; the others are numeric only.
    fn arithmetic(&mut self, op: &str, a: CelType, b: CelType, also: &[CelType]) -> CelType {
        if !a.known() || !b.known() {
            return CelType::Dyn;
        }
        let same_allowed = a == b && (a.is_numeric() || also.contains(&a));
        if !same_allowed {
            self.problems
                .push(format!("cannot apply '{op}' to {a} and {b}"));
            return CelType::Dyn;
        }
        a
    }
}
