//! `outpost logs`: a task's output as the agent keeps it, in
//! `run_dir/alloc/<group>/alloc/logs/<task>.<stream>.<n>` (`.0` is the file being written,
//! higher numbers are older: `supervise::rotate`), oldest first, optionally followed.

use crate::error::{Context, Error};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How often a followed log is looked at again.
const FOLLOW_EVERY: Duration = Duration::from_millis(250);

/// The log directory of `group` under `run_dir`, after checking that the names cannot leave
/// it (they come from the command line).
pub fn dir(run_dir: &str, group: &str, task: &str) -> Result<PathBuf, Error> {
    let plain = |name: &str| {
        !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            && !name.starts_with('.')
    };
    if !plain(group) || !plain(task) {
        return Err(Error::config(format!(
            "\"{group}\" / \"{task}\" is not a group and task name"
        )));
    }
    Ok(Path::new(run_dir)
        .join("alloc")
        .join(group)
        .join("alloc/logs"))
}

/// A task's files for `stream` (`stdout` or `stderr`), oldest first.
pub fn files(dir: &Path, task: &str, stream: &str) -> Vec<PathBuf> {
    let mut numbered: Vec<(u32, PathBuf)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            let n = name
                .strip_prefix(&format!("{task}.{stream}."))?
                .parse()
                .ok()?;
            Some((n, entry.path()))
        })
        .collect();
    numbered.sort_by_key(|(n, _)| std::cmp::Reverse(*n));
    numbered.into_iter().map(|(_, path)| path).collect()
}

/// The tasks that have logs in `dir`, for an error that lists them.
pub fn tasks(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            Some(name.split_once(".std")?.0.to_string())
        })
        .collect();
    names.sort();
    names.dedup();
    names
}

/// Copies the task's logs to `out`, oldest first; with `follow`, keeps copying what is
/// appended to the current file (from its start again when rotation truncates it) until
/// writing fails (the reader went away).
pub fn show(
    dir: &Path,
    task: &str,
    stream: &str,
    follow: bool,
    out: &mut dyn Write,
) -> Result<(), Error> {
    let all = files(dir, task, stream);
    if all.is_empty() {
        let known = tasks(dir);
        return Err(Error::permanent(format!(
            "no {stream} log of task \"{task}\" in {} (tasks with logs: {})",
            dir.display(),
            if known.is_empty() {
                "none".to_string()
            } else {
                known.join(", ")
            }
        )));
    }
    for path in &all {
        let mut file =
            std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
        std::io::copy(&mut file, out).context("writing the log")?;
    }
    if !follow {
        return Ok(());
    }
    let current = dir.join(format!("{task}.{stream}.0"));
    let mut at = std::fs::metadata(&current).map_or(0, |m| m.len());
    loop {
        std::thread::sleep(FOLLOW_EVERY);
        let Ok(mut file) = std::fs::File::open(&current) else {
            continue;
        };
        let len = file.metadata().map_or(0, |m| m.len());
        if len < at {
            at = 0; // rotated: the file starts again
        }
        if len == at {
            continue;
        }
        file.seek(SeekFrom::Start(at)).context("reading the log")?;
        let mut fresh = Vec::new();
        file.take(len - at)
            .read_to_end(&mut fresh)
            .context("reading the log")?;
        at = len;
        out.write_all(&fresh).context("writing the log")?;
        out.flush().context("writing the log")?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotated_files_come_oldest_first_and_names_cannot_leave_the_directory() {
        let dir = std::env::temp_dir().join(format!("outpost-logs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for (n, text) in [(0, "c\n"), (1, "b\n"), (2, "a\n")] {
            std::fs::write(dir.join(format!("web.stdout.{n}")), text).unwrap();
        }
        std::fs::write(dir.join("web.stderr.0"), "oops\n").unwrap();
        let mut out = Vec::new();
        show(&dir, "web", "stdout", false, &mut out).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "a\nb\nc\n");
        let missing = show(&dir, "api", "stdout", false, &mut Vec::new()).unwrap_err();
        assert!(
            missing.message().contains("tasks with logs: web"),
            "{missing}"
        );
        assert!(super::dir("/run/outpost", "..", "x").is_err());
        assert!(super::dir("/run/outpost", "g", "a/b").is_err());
        assert_eq!(
            super::dir("/run/outpost", "g", "web").unwrap(),
            Path::new("/run/outpost/alloc/g/alloc/logs")
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
