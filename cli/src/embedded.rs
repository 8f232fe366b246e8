//! The embedded defaults of `nems up`: a sample Spine directory and a small synthetic
//! reference data set (in the official file shapes) so that generic rules work at once.

use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::import;

/// The sample directory file.
pub const SAMPLE_DIRECTORY: &str = include_str!("../../config/directory.sample.toml");

const SYNTHETIC: &[(&str, &[u8])] = &[
    (
        "nhg-synthetic.csv",
        include_bytes!("../../core/data/synthetic/nhg-synthetic.csv"),
    ),
    (
        "epraccur-synthetic.csv",
        include_bytes!("../../core/data/synthetic/epraccur-synthetic.csv"),
    ),
    (
        "sicbl-codes-synthetic.csv",
        include_bytes!("../../core/data/synthetic/sicbl-codes-synthetic.csv"),
    ),
    (
        "demographics-synthetic.csv",
        include_bytes!("../../core/data/synthetic/demographics-synthetic.csv"),
    ),
];

/// Writes the sample directory into the data directory and returns its path.
pub fn write_sample_directory(data_dir: &Path) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("creating {}", data_dir.display()))?;
    let path = data_dir.join("directory.sample.toml");
    std::fs::write(&path, SAMPLE_DIRECTORY)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// Imports the synthetic data set through the operator API when the store has none.
pub async fn load_reference_data(
    operator_url: &str,
    tls: Option<tonic::transport::ClientTlsConfig>,
) -> anyhow::Result<()> {
    let mut operator = import::operator_client_with(operator_url, tls.clone())?;
    let status = operator
        .get_status(nems_proto::v1::GetStatusRequest {})
        .await
        .context("asking core for its status")?
        .into_inner();
    let empty_reference = status.reference_generations.iter().all(|g| *g == 0);
    for (name, bytes) in SYNTHETIC {
        let is_demographics = name.starts_with("demographics");
        if (is_demographics && status.patients > 0) || (!is_demographics && !empty_reference) {
            continue;
        }
        let summary =
            import::import_with(*bytes, name, operator_url, tls.clone(), false, None).await?;
        tracing::info!(
            file = name,
            rows = summary.rows,
            bad = summary.bad,
            "embedded synthetic data loaded"
        );
    }
    Ok(())
}
