//! A route as `control.tenants` and `control.tenant_moves` store it: its storage columns,
//! URLs sealed for the tenant's row (so that they can be copied from one table to the other
//! verbatim), locations in clear.

use borough_tenancy::placement::{Route, Storage};
use borough_tenancy::secrets::{Keyring, SecretError};

/// A route's storage columns.
pub struct StorageColumns {
    pub placement: &'static str,
    pub schema: String,
    pub database_name: Option<String>,
    pub url: Option<String>,
    pub read_url: Option<String>,
    pub location: Option<String>,
    pub read_location: Option<String>,
}

/// Why a route's columns could not be made.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error(
        "a database given by URL needs BOROUGH_SECRET_KEYS on the user service (its URLs are \
         stored encrypted)"
    )]
    NoKeys,
    #[error(transparent)]
    Secret(#[from] SecretError),
}

/// The columns of `route`, its URLs sealed with `keys` (needed only for a database given
/// by URL).
pub fn storage_columns(route: &Route, keys: Option<&Keyring>) -> Result<StorageColumns, SealError> {
    let mut columns = StorageColumns {
        placement: route.placement.as_str(),
        schema: route.schema.clone(),
        database_name: None,
        url: None,
        read_url: None,
        location: None,
        read_location: None,
    };
    match &route.storage {
        Storage::Default => {}
        Storage::OwnDatabase { name } => columns.database_name = Some(name.clone()),
        Storage::External(external) => {
            let keys = keys.ok_or(SealError::NoKeys)?;
            let tenant = *route.tenant_id.as_uuid();
            let seal = |column: &str, url: &Option<String>| {
                url.as_deref()
                    .map(|url| keys.seal(tenant, column, url))
                    .transpose()
            };
            columns.url = seal("database_url", &external.url)?;
            columns.read_url = seal("read_url", &external.read_url)?;
            columns.location = Some(external.location.clone());
            columns.read_location = external.read_location.clone();
        }
    }
    Ok(columns)
}
