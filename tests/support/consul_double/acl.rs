//! ACL tokens: replication lag with negative caching, token/self, login, logout and
//! token create, as Consul answers them.

use super::*;

/// A token is usable when ACLs are off, or it is known, visible and not negatively cached.
pub(super) fn token_state(s: &mut State, token: Option<&str>) -> Result<(), ()> {
    if !s.acl_enabled {
        return Ok(());
    }
    let Some(secret) = token else { return Err(()) };
    if s.negative_cache
        .get(secret)
        .is_some_and(|until| Instant::now() < *until)
    {
        return Err(());
    }
    match s.tokens.get(secret) {
        Some(t) if Instant::now() >= t.visible_at => Ok(()),
        _ => Err(()),
    }
}

pub(super) fn authorize_write(s: &mut State, r: &Request) -> Result<(), Reply> {
    if !s.acl_enabled {
        return Ok(());
    }
    match r.token.as_deref() {
        None => Err(text(
            403,
            "Permission denied: anonymous token lacks permission 'service:write'. The anonymous token is used implicitly when a request does not specify a token.",
        )),
        Some(t) => token_state(s, Some(t)).map_err(|()| text(403, "ACL not found")),
    }
}

pub(super) fn token_self(s: &mut State, r: &Request, negative_cached: &mut bool) -> Reply {
    if !s.acl_enabled {
        return text(401, "ACL support disabled");
    }
    let Some(secret) = r.token.clone() else {
        return text(403, "ACL not found");
    };
    match token_state(s, Some(&secret)) {
        Ok(()) => ok_json(
            json::from_str(r#"{"AccessorID":"a1b2c3d4-0000-4000-8000-000000000001","Description":"outpost test token","Policies":[],"Local":false}"#)
                .unwrap_or(Value::Null),
        ),
        Err(()) => {
            // Only a non-stale read of a token the agent cannot resolve is cached.
            if !r.has_query("stale") && !s.negative_cache.contains_key(&secret) {
                s.negative_cache.insert(secret, Instant::now() + NEGATIVE_CACHE_TTL);
                *negative_cached = true;
            }
            text(403, "ACL not found")
        }
    }
}

pub(super) fn mint(s: &mut State, login: bool, description: &str, identities: Value) -> Reply {
    s.next_accessor += 1;
    let accessor = format!("00000000-0000-4000-8000-{:012x}", s.next_accessor);
    let secret = format!("11111111-2222-4333-8444-{:012x}", s.next_accessor * 7919);
    let visible_at = Instant::now() + s.minted_lag;
    s.tokens.insert(secret.clone(), Token { visible_at });
    s.minted.insert(accessor.clone(), (secret.clone(), login));
    let mut token = Object::new();
    token.insert("AccessorID".into(), Value::String(accessor));
    token.insert("SecretID".into(), Value::String(secret));
    token.insert("Description".into(), Value::String(description.into()));
    token.insert("ServiceIdentities".into(), identities);
    token.insert("Local".into(), Value::Bool(true));
    ok_json(Value::Object(token))
}

/// `POST /v1/acl/login` (§4.1). Errors for an unknown method or an untrusted JWT are the
/// double's wording: the reference gives none.
pub(super) fn login(s: &mut State, body: &str) -> Reply {
    if !s.acl_enabled {
        return text(401, "ACL support disabled");
    }
    let Ok(Value::Object(req)) = json::from_str::<Value>(body) else {
        return bad("expected a JSON object");
    };
    if let Err(reply) = check_keys(&req, &["AuthMethod", "BearerToken", "Meta"], "login") {
        return reply;
    }
    let (Ok(Some(method)), Ok(Some(jwt))) =
        (get_str(&req, "AuthMethod"), get_str(&req, "BearerToken"))
    else {
        return bad("AuthMethod and BearerToken are required");
    };
    let Some(known) = s.auth_method.clone().filter(|m| m.name == method) else {
        return text(
            403,
            &format!("Permission denied: auth method \"{method}\" not found"),
        );
    };
    if known.jwt != jwt {
        return text(
            403,
            "Permission denied: failed to validate the bearer token",
        );
    }
    let service = match string_map(&req, "Meta") {
        Ok(meta) => match meta.get("requested_by") {
            Some(Value::String(by)) => by.trim_start_matches("outpost_service_").to_string(),
            _ => String::new(),
        },
        Err(reply) => return reply,
    };
    let mut identity = Object::new();
    identity.insert("ServiceName".into(), Value::String(service));
    mint(
        s,
        true,
        "token created via login",
        Value::Array(vec![Value::Object(identity)].into_iter().collect()),
    )
}

pub(super) fn logout(s: &mut State, r: &Request) -> Reply {
    if !s.acl_enabled {
        return text(401, "ACL support disabled");
    }
    let Some(secret) = r.token.clone() else {
        return text(403, "ACL not found");
    };
    // The token is resolved first: an unknown one is "ACL not found".
    if token_state(s, Some(&secret)).is_err() {
        return text(403, "ACL not found");
    }
    let accessor = s
        .minted
        .iter()
        .find(|(_, (sec, login))| *sec == secret && *login)
        .map(|(a, _)| a.clone());
    match accessor {
        Some(a) => {
            s.minted.remove(&a);
            s.tokens.remove(&secret);
            (200, "true".into(), Vec::new())
        }
        None => text(
            403,
            "Permission denied: only tokens created by login can be destroyed by logout",
        ),
    }
}

pub(super) fn create_token(s: &mut State, body: &str) -> Reply {
    let Ok(Value::Object(req)) = json::from_str::<Value>(body) else {
        return text(400, "Token decoding failed: expected a JSON object");
    };
    let allowed = [
        "Description",
        "ServiceIdentities",
        "Local",
        "Policies",
        "Roles",
        "ExpirationTTL",
    ];
    if let Some(k) = req.keys().find(|k| !allowed.contains(&k.as_str())) {
        return text(
            400,
            &format!("Token decoding failed: unknown field \"{k}\""),
        );
    }
    let Some(Value::Array(ids)) = req.get("ServiceIdentities") else {
        return text(
            400,
            "Token decoding failed: ServiceIdentities required by this double",
        );
    };
    let description = match req.get("Description") {
        Some(Value::String(d)) => d.clone(),
        _ => String::new(),
    };
    mint(s, false, &description, Value::Array(ids.clone()))
}
