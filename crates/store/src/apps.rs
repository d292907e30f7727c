//! App administration, written once for the admin API and the `imreport app` commands: keys and
//! secrets generated or checked, then the store changed.

use crate::{Result, Store, StoreError};
use imreport_domain::app::{
    AppInfo, SecretHash, generate_token, validate_app_key, validate_app_name, validate_secret,
};
use serde::{Deserialize, Serialize};

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct CreateApp {
    pub app_key: Option<String>,
    pub master_secret: Option<String>,
    pub name: Option<String>,
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct RotateSecret {
    pub master_secret: Option<String>,
}

/// Credentials as shown once, at creation or rotation.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Credentials {
    pub app_key: String,
    pub master_secret: String,
    pub name: String,
}

/// Adds an app: the key and secret given (checked), or random 24-character ones.
pub async fn create_app(store: &dyn Store, req: CreateApp) -> Result<Credentials> {
    let app_key = req.app_key.unwrap_or_else(generate_token);
    validate_app_key(&app_key).map_err(StoreError::Invalid)?;
    let master_secret = req.master_secret.unwrap_or_else(generate_token);
    validate_secret(&master_secret).map_err(StoreError::Invalid)?;
    let name = req.name.unwrap_or_else(|| app_key.clone());
    validate_app_name(&name).map_err(StoreError::Invalid)?;
    store
        .create_app(&app_key, &name, SecretHash::new(&master_secret))
        .await?;
    Ok(Credentials {
        app_key,
        master_secret,
        name,
    })
}

/// Replaces an app's master secret (the one given, checked, or a random one).
pub async fn rotate_secret(store: &dyn Store, key: &str, req: RotateSecret) -> Result<Credentials> {
    let master_secret = req.master_secret.unwrap_or_else(generate_token);
    validate_secret(&master_secret).map_err(StoreError::Invalid)?;
    let app = store
        .set_secret(key, SecretHash::new(&master_secret))
        .await?;
    Ok(Credentials {
        app_key: app.key,
        master_secret,
        name: app.name,
    })
}

/// What an operator sees of each app (never a secret).
pub async fn list_apps(store: &dyn Store) -> Result<Vec<AppInfo>> {
    Ok(store.list_apps().await?.iter().map(AppInfo::from).collect())
}
