//! borg's own figures, as its JSON gives them: an archive's (`create
//! --json`, `info --json`) and the repository's totals (`cache.stats`).

use serde::{Deserialize, Serialize};

use crate::records::error::RecordError;

type Result<T> = std::result::Result<T, RecordError>;

/// `archive` of `borg create --json` / `archives[0]` of `borg info --json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ArchiveFigures {
    pub name: String,
    /// borg's own duration of the archive, seconds.
    pub duration: f64,
    pub original_size: u64,
    pub compressed_size: u64,
    pub deduplicated_size: u64,
    pub nfiles: u64,
}

/// `cache.stats` of borg's JSON: the repository's totals.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RepositoryTotals {
    pub total_chunks: u64,
    pub total_csize: u64,
    pub total_size: u64,
    pub total_unique_chunks: u64,
    pub unique_csize: u64,
    pub unique_size: u64,
}

/// The archive count of `borg list --json` output.
pub fn parse_list_json(stdout: &[u8]) -> Result<u64> {
    json(stdout)?["archives"]
        .as_array()
        .map(|a| a.len() as u64)
        .ok_or_else(|| missing("no \"archives\" in borg list --json"))
}

fn json(stdout: &[u8]) -> Result<serde_json::Value> {
    serde_json::from_slice(stdout).map_err(|e| RecordError::Figures(format!("not JSON: {e}")))
}

fn missing(what: impl Into<String>) -> RecordError {
    RecordError::Figures(what.into())
}

/// Figures of `borg create --json` output.
pub fn parse_create_json(stdout: &[u8]) -> Result<(ArchiveFigures, RepositoryTotals)> {
    let v = json(stdout)?;
    Ok((archive_figures(&v["archive"])?, totals(&v)?))
}

/// Figures of `borg info --json REPO::ARCHIVE` output.
pub fn parse_info_json(stdout: &[u8]) -> Result<(ArchiveFigures, RepositoryTotals)> {
    let v = json(stdout)?;
    let last = v["archives"]
        .as_array()
        .and_then(|a| a.last())
        .ok_or_else(|| missing("no archive in it"))?;
    Ok((archive_figures(last)?, totals(&v)?))
}

/// The totals of `borg info --json REPOSITORY` output (no archive named).
pub fn parse_repository_info_json(stdout: &[u8]) -> Result<RepositoryTotals> {
    totals(&json(stdout)?)
}

fn archive_figures(a: &serde_json::Value) -> Result<ArchiveFigures> {
    let stat = |key: &str| {
        a["stats"][key]
            .as_u64()
            .ok_or_else(|| missing(format!("no archive stats.{key}")))
    };
    Ok(ArchiveFigures {
        name: a["name"]
            .as_str()
            .ok_or_else(|| missing("no archive name"))?
            .to_owned(),
        duration: a["duration"]
            .as_f64()
            .ok_or_else(|| missing("no archive duration"))?,
        original_size: stat("original_size")?,
        compressed_size: stat("compressed_size")?,
        deduplicated_size: stat("deduplicated_size")?,
        nfiles: stat("nfiles")?,
    })
}

fn totals(v: &serde_json::Value) -> Result<RepositoryTotals> {
    let stat = |key: &str| {
        v["cache"]["stats"][key]
            .as_u64()
            .ok_or_else(|| missing(format!("no cache.stats.{key}")))
    };
    Ok(RepositoryTotals {
        total_chunks: stat("total_chunks")?,
        total_csize: stat("total_csize")?,
        total_size: stat("total_size")?,
        total_unique_chunks: stat("total_unique_chunks")?,
        unique_csize: stat("unique_csize")?,
        unique_size: stat("unique_size")?,
    })
}
