//! Parsing `nvidia-smi --format=csv,noheader,nounits` output. Pure, so it is
//! tested against captured output rather than a live GPU.

use crate::{GpuInfo, GpuProcess, ProbeError};

/// Builds the inventory from the output of
/// `nvidia-smi --query-gpu=index,name,uuid,memory.total,memory.used,utilization.gpu`
/// and `nvidia-smi --query-compute-apps=gpu_uuid,pid,used_memory`
/// (both with `--format=csv,noheader,nounits`).
///
/// Fields nvidia-smi cannot fill ("[N/A]", "[Not Supported]", "N/A", empty)
/// read as 0, or as no uuid. Apps on a uuid not in the GPU list are ignored.
/// GPUs come back sorted by index.
pub fn parse_smi(gpus_csv: &str, apps_csv: &str) -> Result<Vec<GpuInfo>, ProbeError> {
    let mut gpus = non_blank_lines(gpus_csv).map(parse_gpu_line).collect::<Result<Vec<_>, _>>()?;
    for line in non_blank_lines(apps_csv) {
        let Some((uuid, process)) = parse_app_line(line)? else {
            continue;
        };
        match gpus.iter_mut().find(|g| g.uuid.as_deref() == Some(uuid)) {
            Some(gpu) => gpu.processes.push(process),
            // The process list is sampled separately from the GPU list, so a
            // GPU can vanish in between (or have no uuid); that is not an error.
            None => tracing::debug!(uuid, pid = process.pid, "nvidia-smi app on unlisted GPU ignored"),
        }
    }
    gpus.sort_by_key(|g| g.index);
    Ok(gpus)
}

fn non_blank_lines(text: &str) -> impl Iterator<Item = &str> {
    text.lines().map(str::trim).filter(|l| !l.is_empty())
}

fn parse_error(line: &str, reason: impl Into<String>) -> ProbeError {
    ProbeError::SmiParse { line: line.to_owned(), reason: reason.into() }
}

/// `index, name, uuid, memory.total, memory.used, utilization.gpu`.
///
/// Split from both ends so that a GPU name containing a comma stays whole.
fn parse_gpu_line(line: &str) -> Result<GpuInfo, ProbeError> {
    let (index, rest) = line.split_once(',').ok_or_else(|| parse_error(line, "expected 6 comma-separated fields"))?;
    let mut from_right = rest.rsplitn(5, ',').map(str::trim);
    let (Some(util), Some(used), Some(total), Some(uuid), Some(name)) =
        (from_right.next(), from_right.next(), from_right.next(), from_right.next(), from_right.next())
    else {
        return Err(parse_error(line, "expected 6 comma-separated fields"));
    };
    let index =
        index.trim().parse::<u32>().map_err(|e| parse_error(line, format!("GPU index {:?}: {e}", index.trim())))?;
    let utilization_pct = u32::try_from(number(line, "utilization", util)?)
        .map_err(|_| parse_error(line, format!("utilization {util:?} out of range")))?;
    Ok(GpuInfo {
        index,
        name: name.to_owned(),
        uuid: (!unavailable(uuid)).then(|| uuid.to_owned()),
        memory_total_mib: number(line, "memory.total", total)?,
        memory_used_mib: number(line, "memory.used", used)?,
        utilization_pct,
        processes: Vec::new(),
    })
}

/// `gpu_uuid, pid, used_memory`. Returns None for a line without commas:
/// some driver versions print a sentence such as "No running processes
/// found" instead of an empty list.
fn parse_app_line(line: &str) -> Result<Option<(&str, GpuProcess)>, ProbeError> {
    if !line.contains(',') {
        tracing::debug!(line, "nvidia-smi apps line without fields ignored");
        return Ok(None);
    }
    let fields: Vec<&str> = line.split(',').map(str::trim).collect();
    let [uuid, pid, used] = fields[..] else {
        return Err(parse_error(line, "expected 3 comma-separated fields"));
    };
    let pid = pid.parse::<u32>().map_err(|e| parse_error(line, format!("pid {pid:?}: {e}")))?;
    let used_memory_mib = number(line, "used_memory", used)?;
    Ok(Some((uuid, GpuProcess { pid, used_memory_mib })))
}

/// Placeholders nvidia-smi prints where a value is not available.
fn unavailable(field: &str) -> bool {
    field.is_empty() || field.eq_ignore_ascii_case("N/A") || (field.starts_with('[') && field.ends_with(']'))
}

/// A non-negative integer field; unavailable reads as 0. A trailing unit
/// ("MiB", "%") is tolerated in case the query ran without `nounits`.
fn number(line: &str, what: &str, field: &str) -> Result<u64, ProbeError> {
    if unavailable(field) {
        return Ok(0);
    }
    let digits = field.trim_end_matches(|c: char| c.is_ascii_alphabetic() || c == '%').trim_end();
    digits.parse().map_err(|e| parse_error(line, format!("{what} {field:?}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GPUS: &str = "\
0, NVIDIA A100-SXM4-80GB, GPU-11111111-aaaa-bbbb-cccc-000000000000, 81920, 0, 0
1, NVIDIA A100-SXM4-80GB, GPU-22222222-aaaa-bbbb-cccc-000000000000, 81920, 40312, [N/A]
";
    const APPS: &str = "GPU-22222222-aaaa-bbbb-cccc-000000000000, 4242, 40000\n";

    #[test]
    fn two_gpus_with_an_app_on_the_second() {
        let gpus = parse_smi(GPUS, APPS).unwrap();
        assert_eq!(gpus.len(), 2);
        assert_eq!(
            gpus[0],
            GpuInfo {
                index: 0,
                name: "NVIDIA A100-SXM4-80GB".into(),
                uuid: Some("GPU-11111111-aaaa-bbbb-cccc-000000000000".into()),
                memory_total_mib: 81920,
                memory_used_mib: 0,
                utilization_pct: 0,
                processes: vec![],
            }
        );
        assert_eq!(gpus[1].index, 1);
        assert_eq!(gpus[1].memory_used_mib, 40312);
        assert_eq!(gpus[1].utilization_pct, 0, "[N/A] reads as 0");
        assert_eq!(gpus[1].processes, [GpuProcess { pid: 4242, used_memory_mib: 40000 }]);
    }

    #[test]
    fn placeholders_units_commas_in_names_and_crlf() {
        let gpus = parse_smi(
            "1, Tesla, T4 (rev, b), [N/A], 15360 MiB, [Not Supported], 7 %\r\n\r\n",
            "No running processes found\r\n[N/A], 9, [N/A]\n",
        )
        .unwrap();
        assert_eq!(gpus.len(), 1);
        let g = &gpus[0];
        assert_eq!(g.name, "Tesla, T4 (rev, b)");
        assert_eq!(g.uuid, None);
        assert_eq!((g.memory_total_mib, g.memory_used_mib, g.utilization_pct), (15360, 0, 7));
        assert!(g.processes.is_empty(), "app on an unknown uuid is dropped");
    }

    #[test]
    fn gpus_are_sorted_by_index() {
        let gpus = parse_smi("1, B, GPU-b, 10, 0, 0\n0, A, GPU-a, 10, 0, 0\n", "").unwrap();
        assert_eq!(gpus.iter().map(|g| g.index).collect::<Vec<_>>(), [0, 1]);
    }

    #[test]
    fn empty_output_is_no_gpus() {
        assert_eq!(parse_smi("", "").unwrap(), vec![]);
    }

    #[test]
    fn garbage_is_an_error_naming_the_line() {
        for (gpus, apps) in [
            ("0, A, GPU-a, 10", ""),
            ("x, A, GPU-a, 10, 0, 0", ""),
            ("0, A, GPU-a, lots, 0, 0", ""),
            ("0, A, GPU-a, 10, 0, 5000000000", ""),
            ("0, A, GPU-a, 10, 0, 0", "GPU-a, 12"),
            ("0, A, GPU-a, 10, 0, 0", "GPU-a, [N/A], 5"),
        ] {
            let err = parse_smi(gpus, apps).unwrap_err();
            let bad_line = if apps.is_empty() { gpus } else { apps };
            assert!(matches!(err, ProbeError::SmiParse { ref line, .. } if line == bad_line), "{err:?}");
        }
    }
}
