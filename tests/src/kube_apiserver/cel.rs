//! `x-kubernetes-validations`: CEL rules compiled when a CRD is reviewed and
//! evaluated on every write of a custom resource (create, update, status),
//! as k8s.io/apiextensions-apiserver's `pkg/apiserver/schema/cel` does:
//! `self` bound to the value at the rule's node (at the root, the object
//! with only `apiVersion`, `kind`, `metadata.name` and
//! `metadata.generateName`), rules on absent or null values skipped,
//! transition rules (`oldSelf`) evaluated only where an old value exists,
//! and failures worded as `validateExpressions` words them.
//!
//! # Differences from the real server
//!
//! Compilation parses and refuses variables other than `self`/`oldSelf`,
//! but does not type-check against the schema (a rule naming a field the
//! schema lacks compiles here and fails when evaluated); no cost is
//! estimated or budgeted; `messageExpression` is not evaluated (the
//! `message` is used); no ratcheting, no `optionalOldSelf`; old values are
//! correlated through object properties and map keys, not list items; rules
//! under `allOf`/`anyOf`/`oneOf` are not evaluated.

use cel::common::ast::{EntryExpr, Expr, IdedExpr, MapExpr, StructExpr};
use cel::{Context, Program, Value as Cel};
use serde_json::Value;

use super::field::{FieldError, child, index, key};

/// The variables a rule may use.
const VARIABLES: &[&str] = &["self", "oldSelf"];

/// `cel.Compile`, as far as this stand-in goes: the message is the
/// compiler's (`ERROR: <input>:line:col: ...`).
pub fn compile(rule: &str) -> Result<Program, String> {
    let program = Program::compile(rule).map_err(|e| e.to_string())?;
    let mut bound: Vec<&str> = VARIABLES.to_vec();
    if let Some(undeclared) = undeclared(program.expression(), &mut bound) {
        return Err(format!(
            "ERROR: <input>: undeclared reference to '{undeclared}' (in container '')"
        ));
    }
    Ok(program)
}

/// The first identifier `expression` uses that nothing declares: not a
/// rule variable, nor a variable of an enclosing macro (`x` in
/// `filter(x, ...)`), which scopes as cel-go's comprehensions do.
fn undeclared<'a>(expression: &'a IdedExpr, bound: &mut Vec<&'a str>) -> Option<&'a str> {
    let children: Vec<&IdedExpr> = match &expression.expr {
        Expr::Ident(name) => return (!bound.contains(&name.as_str())).then_some(name.as_str()),
        Expr::Select(select) => vec![&select.operand],
        Expr::Call(call) => call
            .target
            .as_deref()
            .into_iter()
            .chain(&call.args)
            .collect(),
        Expr::List(list) => list.elements.iter().collect(),
        Expr::Map(MapExpr { entries }) | Expr::Struct(StructExpr { entries, .. }) => entries
            .iter()
            .flat_map(|entry| match &entry.expr {
                EntryExpr::MapEntry(e) => vec![&e.key, &e.value],
                EntryExpr::StructField(f) => vec![&f.value],
            })
            .collect(),
        Expr::Comprehension(c) => {
            if let Some(found) =
                undeclared(&c.iter_range, bound).or_else(|| undeclared(&c.accu_init, bound))
            {
                return Some(found);
            }
            let outer = bound.len();
            bound.push(&c.accu_var);
            let mut found = undeclared(&c.result, bound);
            bound.push(&c.iter_var);
            bound.extend(c.iter_var2.as_deref());
            found = found
                .or_else(|| undeclared(&c.loop_cond, bound))
                .or_else(|| undeclared(&c.loop_step, bound));
            bound.truncate(outer);
            return found;
        }
        Expr::Literal(_) | Expr::Unspecified => return None,
    };
    children.into_iter().find_map(|e| undeclared(e, bound))
}

/// Every rule of `schema` (a CRD version's `openAPIV3Schema`) evaluated
/// over `object`, with `old` the stored object on an update.
pub fn evaluate(schema: &Value, object: &Value, old: Option<&Value>) -> Vec<FieldError> {
    let mut errors = Vec::new();
    let root = |object: &Value| {
        let mut root = object.clone();
        if let Some(metadata) = root.get_mut("metadata").and_then(Value::as_object_mut) {
            metadata.retain(|k, _| k == "name" || k == "generateName");
        }
        root
    };
    let old = old.map(root);
    walk(schema, &root(object), old.as_ref(), "", &mut errors);
    errors
}

fn walk(
    schema: &Value,
    value: &Value,
    old: Option<&Value>,
    path: &str,
    errors: &mut Vec<FieldError>,
) {
    if value.is_null() {
        return;
    }
    rules(schema, value, old.filter(|o| !o.is_null()), path, errors);
    match value {
        Value::Object(map) => {
            let old = old.and_then(Value::as_object);
            let properties = schema.get("properties").and_then(Value::as_object);
            let additional = schema.get("additionalProperties").filter(|a| a.is_object());
            for (name, item) in map {
                let old = old.and_then(|o| o.get(name));
                if let Some(property) = properties.and_then(|p| p.get(name)) {
                    walk(property, item, old, &child(path, name), errors);
                } else if let Some(additional) = additional {
                    walk(additional, item, old, &key(path, name), errors);
                }
            }
        }
        Value::Array(items) => {
            if let Some(item_schema) = schema.get("items") {
                for (i, item) in items.iter().enumerate() {
                    walk(item_schema, item, None, &index(path, i), errors);
                }
            }
        }
        _ => {}
    }
}

/// `validateExpressions` for one node.
fn rules(
    schema: &Value,
    value: &Value,
    old: Option<&Value>,
    path: &str,
    errors: &mut Vec<FieldError>,
) {
    let Some(rules) = schema
        .get("x-kubernetes-validations")
        .and_then(Value::as_array)
    else {
        return;
    };
    // `field.Path.String()` of the root.
    let path = if path.is_empty() { "<nil>" } else { path };
    let kind = schema.get("type").and_then(Value::as_str).unwrap_or("");
    for rule in rules {
        let text = |k: &str| rule.get(k).and_then(Value::as_str).unwrap_or("").trim();
        let expression = text("rule");
        let program = match compile(expression) {
            Ok(program) => program,
            Err(error) => {
                errors.push(FieldError::invalid(
                    path,
                    kind,
                    &format!("rule compile error: {error}"),
                ));
                continue;
            }
        };
        let transition = program.references().has_variable("oldSelf");
        if transition && old.is_none() {
            continue;
        }
        let mut context = Context::default();
        let bound = context
            .add_variable("self", value)
            .and_then(|()| match old {
                Some(old) => context.add_variable("oldSelf", old),
                None => Ok(()),
            });
        if let Err(error) = bound {
            errors.push(FieldError::invalid(
                path,
                kind,
                &format!("rule activation error: {error}"),
            ));
            continue;
        }
        let described = if text("message").is_empty() {
            expression
        } else {
            text("message")
        };
        match program.execute(&context) {
            Ok(Cel::Bool(true)) => {}
            Ok(Cel::Bool(false)) => {
                let at = match text("fieldPath") {
                    "" => path.to_owned(),
                    field_path => format!("{path}{field_path}"),
                };
                let detail = if text("message").is_empty() {
                    format!("failed rule: {expression}")
                } else {
                    text("message").to_owned()
                };
                errors.push(match text("reason") {
                    "FieldValueForbidden" => FieldError::forbidden(&at, &detail),
                    "FieldValueRequired" => FieldError::required(&at, &detail),
                    "FieldValueDuplicate" => FieldError::duplicate(&at, kind.into()),
                    _ => FieldError::invalid(&at, kind, &detail),
                });
            }
            Ok(other) => errors.push(FieldError::invalid(
                path,
                kind,
                &format!("no such overload: got {other:?}, want bool evaluating rule: {described}"),
            )),
            Err(error) => errors.push(FieldError::invalid(
                path,
                kind,
                &format!("{error} evaluating rule: {described}"),
            )),
        }
    }
}

#[cfg(test)]
mod tests;
