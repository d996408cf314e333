//! What every handler shares.

use std::sync::Arc;
use std::time::Duration;

use borough_proto::query::v1::query_service_client::QueryServiceClient;
use borough_proto::user::v1::tenant_admin_service_client::TenantAdminServiceClient;
use borough_proto::user::v1::user_service_client::UserServiceClient;
use borough_tenancy::directory::KeyCache;
use tonic::transport::Channel;

#[derive(Clone)]
pub struct AppState {
    pub users: UserServiceClient<Channel>,
    pub tenants: TenantAdminServiceClient<Channel>,
    pub query: QueryServiceClient<Channel>,
    pub keys: Arc<KeyCache>,
    /// SHA-256 of the admin token; `None`: the admin API is off.
    pub admin_token_hash: Option<[u8; 32]>,
    pub request_timeout: Duration,
}
