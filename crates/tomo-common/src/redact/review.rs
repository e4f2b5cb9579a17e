//! What a human who decides a pending action reads (issue 12.3): the whole request, uncut,
//! with the fields that decide what the call can do to a host first. Only the values of
//! secret-looking keys are hidden (`DB_PASSWORD` in `env`, `auth`, `password`), each one marked in
//! place and listed by path; no string is rewritten, so a command or an argument is never hidden
//! (the audit rules of [`super::params`] hide `KEY=value` inside commands, which let a payload
//! pass as `API_TOKEN=***`).

use serde_json::{Map, Value};

use super::is_secret_name;

/// What stands in place of a hidden value.
pub const HIDDEN: &str = "<hidden: value of a secret-looking key>";

/// The fields that decide what a call can do to the host, in the order an approver reads them:
/// image, command and arguments, privileges, binds, mounts, devices, capabilities, then network
/// and namespace modes.
pub const RISKY: &[&str] = &[
    "image",
    "command",
    "entrypoint",
    "cmd",
    "args",
    "paths",
    "user",
    "privileged",
    "volumes",
    "mounts",
    "binds",
    "devices",
    "device_cgroup_rules",
    "cap_add",
    "cap_drop",
    "security_opt",
    "sysctls",
    "volumes_from",
    "network_mode",
    "pid_mode",
    "ipc_mode",
    "uts_mode",
    "userns_mode",
    "cgroupns_mode",
];

/// One field of the request.
#[derive(Debug, Clone, PartialEq)]
pub struct Field {
    pub name: String,
    pub value: Value,
    /// One of [`RISKY`].
    pub risky: bool,
}

/// A request as an approver reads it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Review {
    /// Risky fields first (in [`RISKY`]'s order), then the others by name.
    pub fields: Vec<Field>,
    /// The paths of the hidden values (`env.DB_PASSWORD`, `auth`).
    pub hidden: Vec<String>,
}

/// `params` for an approver (see the module doc).
pub fn review(params: &Value) -> Review {
    let mut hidden = Vec::new();
    let Value::Object(members) = params else {
        let value = hide(params, "", &mut hidden);
        return Review {
            fields: vec![Field {
                name: "params".into(),
                value,
                risky: false,
            }],
            hidden,
        };
    };
    let mut fields = Vec::with_capacity(members.len());
    for name in RISKY {
        if let Some(v) = members.get(*name) {
            fields.push(field(name, v, true, &mut hidden));
        }
    }
    let mut rest: Vec<_> = members
        .iter()
        .filter(|(k, _)| !RISKY.contains(&k.as_str()))
        .collect();
    rest.sort_by(|a, b| a.0.cmp(b.0));
    for (name, v) in rest {
        fields.push(field(name, v, false, &mut hidden));
    }
    Review { fields, hidden }
}

fn field(name: &str, v: &Value, risky: bool, hidden: &mut Vec<String>) -> Field {
    let value = if is_secret_name(name) && hideable(v) {
        hidden.push(name.to_owned());
        Value::String(HIDDEN.into())
    } else {
        hide(v, name, hidden)
    };
    Field {
        name: name.to_owned(),
        value,
        risky,
    }
}

/// A value worth hiding: not absent, not a flag.
fn hideable(v: &Value) -> bool {
    !v.is_null() && !v.is_boolean()
}

fn hide(v: &Value, path: &str, hidden: &mut Vec<String>) -> Value {
    let join = |k: &str| {
        if path.is_empty() {
            k.to_owned()
        } else {
            format!("{path}.{k}")
        }
    };
    match v {
        Value::Object(members) => {
            let mut out = Map::new();
            for (k, v) in members {
                let v = if is_secret_name(k) && hideable(v) {
                    hidden.push(join(k));
                    Value::String(HIDDEN.into())
                } else {
                    hide(v, &join(k), hidden)
                };
                out.insert(k.clone(), v);
            }
            Value::Object(out)
        }
        Value::Array(items) => Value::Array(
            items
                .iter()
                .enumerate()
                .map(|(i, v)| hide(v, &join(&i.to_string()), hidden))
                .collect(),
        ),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn only_secret_keys_are_hidden_and_commands_never() {
        let cmd = json!([
            "sh",
            "-c",
            "API_TOKEN=x curl --password hunter2 http://u:p@h/"
        ]);
        let r = review(&json!({
            "labels": {"team": "web"},
            "command": cmd,
            "env": {"DB_PASSWORD": "pw", "MODE": "prod"},
            "auth": {"username": "u", "password": "p"},
            "image": "busybox",
        }));
        let names: Vec<&str> = r.fields.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["image", "command", "auth", "env", "labels"]);
        assert_eq!(r.fields[1].value, cmd, "the command is whole");
        assert!(r.fields[0].risky && r.fields[1].risky && !r.fields[2].risky);
        assert_eq!(r.fields[2].value, json!(HIDDEN));
        assert_eq!(
            r.fields[3].value,
            json!({"DB_PASSWORD": HIDDEN, "MODE": "prod"})
        );
        assert_eq!(r.hidden, ["auth", "env.DB_PASSWORD"]);
    }
}
