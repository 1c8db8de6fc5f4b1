//! `volley serve --config FILE`: a TOML file whose keys are the long flags' names (`smtp_listen`
//! or `smtp-listen`), read before the command line and turned into flags ahead of it. A flag
//! also given on the command line wins: the file's is dropped (for a repeatable flag, all of
//! the file's values), so there is no merging rule to learn.

use std::ffi::OsString;

/// The commands that take `--config`.
const COMMANDS: [&str; 1] = ["serve"];

/// `args` (the process's, program name first) with a config file's flags put in, if the
/// command takes one and it is given.
pub fn expand(args: Vec<OsString>) -> Result<Vec<OsString>, String> {
    let Some(command) = args.get(1).and_then(|c| c.to_str()) else { return Ok(args) };
    if !COMMANDS.contains(&command) {
        return Ok(args);
    }
    let mut path = None;
    for (i, arg) in args.iter().enumerate().skip(2) {
        match arg.to_str() {
            Some("--config") => path = args.get(i + 1).cloned(),
            Some(a) if a.starts_with("--config=") => path = Some(OsString::from(&a["--config=".len()..])),
            _ => {}
        }
    }
    let Some(path) = path else { return Ok(args) };
    let text =
        std::fs::read_to_string(&path).map_err(|e| format!("--config {}: {e}", path.to_string_lossy()))?;
    let given: Vec<String> = args
        .iter()
        .filter_map(|a| a.to_str())
        .filter_map(|a| a.strip_prefix("--"))
        .map(|a| a.split('=').next().unwrap_or(a).to_owned())
        .collect();
    let flags = flags_of(&text, &given).map_err(|e| format!("--config {}: {e}", path.to_string_lossy()))?;
    let mut out = args[..2].to_vec();
    out.extend(flags.into_iter().map(OsString::from));
    out.extend(args[2..].iter().cloned());
    Ok(out)
}

/// The flags a config file says, leaving out those in `given` (flag names without `--`).
fn flags_of(text: &str, given: &[String]) -> Result<Vec<String>, String> {
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| e.to_string())?;
    let mut flags = Vec::new();
    for (key, value) in table {
        let name = key.replace('_', "-");
        if name == "config" {
            return Err("a config file cannot name another".into());
        }
        if given.contains(&name) {
            continue;
        }
        let values = match value {
            toml::Value::Array(items) => items,
            single => vec![single],
        };
        for value in values {
            let text = match value {
                toml::Value::Boolean(true) => {
                    flags.push(format!("--{name}"));
                    continue;
                }
                toml::Value::Boolean(false) => continue,
                toml::Value::String(s) => s,
                toml::Value::Integer(n) => n.to_string(),
                toml::Value::Float(f) => f.to_string(),
                other => return Err(format!("`{key}`: a {} is not a flag's value", other.type_str())),
            };
            flags.push(format!("--{name}={text}"));
        }
    }
    Ok(flags)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    #[test]
    fn a_file_becomes_flags_and_the_command_line_wins() {
        let text = "smtp_listen = \"0.0.0.0:25\"\nmax-message-size = 1000\nquiet = true\nno_shaping_defaults = false\n\
                    dkim = [\"a:s1:k1.pem\", \"a:s2:k2.pem\"]\ntrusted_networks = [\"10.0.0.0/8\"]\n";
        let flags = flags_of(text, &["trusted-networks".to_owned()]).unwrap();
        assert_eq!(
            flags,
            [
                "--dkim=a:s1:k1.pem",
                "--dkim=a:s2:k2.pem",
                "--max-message-size=1000",
                "--quiet",
                "--smtp-listen=0.0.0.0:25",
            ]
        );
        assert!(flags_of("x = { a = 1 }", &[]).unwrap_err().contains("`x`"));
        assert!(flags_of("config = \"other.toml\"", &[]).is_err());
        assert!(flags_of("not toml", &[]).is_err());
    }

    #[test]
    fn only_serve_reads_one() {
        let args = os(&["volley", "send", "--config", "/nonexistent"]);
        assert_eq!(expand(args.clone()).unwrap(), args);
        let err = expand(os(&["volley", "serve", "--config", "/nonexistent/volley.toml"])).unwrap_err();
        assert!(err.contains("/nonexistent/volley.toml"), "{err}");
        let dir = std::env::temp_dir().join(format!("volley-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("serve.toml");
        std::fs::write(&file, "spool = \"/var/spool/volley\"\nquiet = true\n").unwrap();
        let path = file.to_str().unwrap();
        let out = expand(os(&["volley", "serve", "--quiet", "--config", path])).unwrap();
        assert_eq!(out, os(&["volley", "serve", "--spool=/var/spool/volley", "--quiet", "--config", path]));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
