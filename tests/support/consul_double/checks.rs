//! Strict JSON decoding: unknown keys and wrong types refused with Consul's texts.

use super::*;

pub(super) fn bad(reason: &str) -> Reply {
    text(400, &format!("Request decode failed: {reason}"))
}

pub(super) fn check_keys(obj: &Object, allowed: &[&str], what: &str) -> Result<(), Reply> {
    match obj.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(k) => Err(bad(&format!("{what}: unknown field \"{k}\""))),
        None => Ok(()),
    }
}

pub(super) fn get_str<'a>(obj: &'a Object, key: &str) -> Result<Option<&'a str>, Reply> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(v)) => Ok(Some(v)),
        Some(_) => Err(bad(&format!("{key}: expected a string"))),
    }
}

pub(super) fn get_port(obj: &Object, key: &str) -> Result<u64, Reply> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(0),
        Some(Value::Number(Number::U64(n))) if *n <= 65535 => Ok(*n),
        Some(_) => Err(bad(&format!("{key}: expected a port number"))),
    }
}

pub(super) fn get_obj<'a>(obj: &'a Object, key: &str) -> Result<Option<&'a Object>, Reply> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(o)) => Ok(Some(o)),
        Some(_) => Err(bad(&format!("{key}: expected an object"))),
    }
}

pub(super) fn get_array<'a>(obj: &'a Object, key: &str) -> Result<Option<&'a Array>, Reply> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(a)) => Ok(Some(a)),
        Some(_) => Err(bad(&format!("{key}: expected an array"))),
    }
}

pub(super) fn string_list(obj: &Object, key: &str) -> Result<Array, Reply> {
    let mut out = Array::new();
    for item in get_array(obj, key)?.into_iter().flatten() {
        match item {
            Value::String(_) => out.push(item.clone()),
            _ => return Err(bad(&format!("{key}: expected strings"))),
        }
    }
    Ok(out)
}

pub(super) fn string_map(obj: &Object, key: &str) -> Result<Object, Reply> {
    let mut out = Object::new();
    for (k, v) in get_obj(obj, key)?.into_iter().flatten() {
        match v {
            Value::String(_) => {
                out.insert(k.clone(), v.clone());
            }
            _ => return Err(bad(&format!("{key}.{k}: expected a string"))),
        }
    }
    Ok(out)
}
