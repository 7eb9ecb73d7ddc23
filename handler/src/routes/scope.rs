//! The tenant a read is about: the caller's own, or, for a platform administrator, any tenant it names with
//! `tenantId`; such a read of another tenant's data is recorded in that tenant's audit chain.

use actix_web::{HttpMessage, HttpRequest};
use uuid::Uuid;

use crate::auth::Permission;
use crate::auth::guard::Caller;
use crate::error::{AppError, ErrorCode};
use crate::metering::audit::CrossTenantRead;

/// The tenant a read is about: the caller's own, or any named one for a platform administrator. A tenant naming
/// another tenant gets 404, as if it did not exist. A platform administrator's read of a tenant other than its
/// own is marked on the request ([`CrossTenantRead`]), so the record stage audits it in that tenant's chain.
pub fn scoped_tenant(req: &HttpRequest, caller: &Caller, named: Option<Uuid>) -> Result<Uuid, AppError> {
    let own = caller.tenant.as_ref().map(|t| t.id);
    match (named, own) {
        (Some(named), _) if caller.permissions.contains(Permission::PlatformAdmin) => {
            if own != Some(named) {
                req.extensions_mut().insert(CrossTenantRead(named));
            }
            Ok(named)
        }
        (Some(named), Some(own)) if named == own => Ok(own),
        (Some(_), _) => Err(AppError::new(ErrorCode::NotFound).with_detail("no such tenant")),
        (None, Some(own)) => Ok(own),
        (None, None) => caller.tenant_id(),
    }
}
