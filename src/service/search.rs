//! Search, with its paging: the next page's token is made here, from the offset the engine
//! computed where the default `top_k` and the depth are decided, so no front door can page
//! with its own idea of them.

use crate::api::{convert, meta_convert, pb};
use crate::auth::Principal;
use crate::error::Result;

use super::{authorize, row, Service, Touches, SEARCH};

impl Service {
    pub async fn search(
        &self,
        who: &Principal,
        r: pb::SearchRequest,
    ) -> Result<pb::SearchResponse> {
        authorize(
            who,
            row(SEARCH, "Search")?,
            Touches::Named(&[&r.collection]),
        )?;
        let explain = r.explain;
        let collection = r.collection.clone();
        // The token is bound to the request it continues (without its paging fields).
        let unpaged = r.clone();
        let params = convert::search_params(r)?;
        let outcome = self.engine()?.search(&collection, params).await?;
        let next = outcome
            .next_offset
            .map(|n| meta_convert::page_token(&unpaged, n))
            .unwrap_or_default();
        Ok(convert::search_response(outcome, explain, next))
    }
}
