//! What the caller's key may do, for clients that adapt to it (the web console shows no write
//! controls to a read-only key). It answers about the key only: its name, its right and the
//! collections it may use; never the key itself, never another key.

use super::{authorize, row, Service, Touches, ACCESS};
use crate::api::pb;
use crate::auth::{Principal, Role};
use crate::error::Result;

impl Service {
    pub async fn who_am_i(
        &self,
        who: &Principal,
        _r: pb::WhoAmIRequest,
    ) -> Result<pb::WhoAmIResponse> {
        authorize(who, row(ACCESS, "WhoAmI")?, Touches::Nothing)?;
        Ok(key_info(who))
    }
}

/// What `who` may do, on the wire.
fn key_info(who: &Principal) -> pb::WhoAmIResponse {
    let role = match who.role {
        Role::Read => pb::Role::Read,
        Role::Write => pb::Role::Write,
        Role::Admin => pb::Role::Admin,
    };
    pb::WhoAmIResponse {
        name: who.name.clone(),
        role: role as i32,
        all_collections: who.collections.is_none(),
        collections: who.collections.iter().flatten().cloned().collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scoped_key_learns_its_right_and_collections() {
        let who = Principal {
            name: "tenant".into(),
            role: Role::Write,
            collections: Some(["b".to_string(), "a".to_string()].into()),
        };
        let me = key_info(&who);
        assert_eq!(me.name, "tenant");
        assert_eq!(me.role, pb::Role::Write as i32);
        assert!(!me.all_collections);
        assert_eq!(me.collections, vec!["a".to_string(), "b".to_string()]);
        let me = key_info(&Principal::anonymous_admin());
        assert_eq!(
            (me.role, me.all_collections),
            (pb::Role::Admin as i32, true)
        );
    }
}
