//! Images as accounts see them: visible (their own, public, or shared with
//! them), owned, and deregistered.

use super::{Cloud, CoreError, IdKind};
use crate::images::{Image, ImageKind};

impl Cloud {
    /// Image `id`, if `account_id` may see it (and launch it).
    pub fn visible_image(&self, account_id: &str, id: &str) -> Result<Image, CoreError> {
        if !IdKind::Image.well_formed(id) {
            return Err(CoreError::Malformed {
                kind: IdKind::Image,
                id: id.to_string(),
            });
        }
        match self.images.get(id)? {
            Some(i) if i.launchable_by(account_id) => Ok(i),
            _ => Err(CoreError::NotFound {
                kind: IdKind::Image,
                ids: vec![id.to_string()],
            }),
        }
    }

    /// Image `id` of `kind`, if `account_id` may launch it.
    pub fn launchable_image(
        &self,
        account_id: &str,
        id: &str,
        kind: ImageKind,
    ) -> Result<Image, CoreError> {
        let image = self.visible_image(account_id, id)?;
        if image.kind != kind {
            return Err(CoreError::NotFound {
                kind: IdKind::Image,
                ids: vec![id.to_string()],
            });
        }
        Ok(image)
    }

    /// Image `id`, if `account_id` owns it (`what` names the operation
    /// refused otherwise).
    pub fn owned_image(&self, account_id: &str, id: &str, what: &str) -> Result<Image, CoreError> {
        let image = self.visible_image(account_id, id)?;
        if image.owner_id != account_id {
            return Err(CoreError::Unauthorized(format!(
                "You are not authorized to {what} image {id}"
            )));
        }
        Ok(image)
    }

    /// Deregisters the account's image `id` (its bytes stay in Walrus).
    pub fn deregister_image(
        &self,
        account_id: &str,
        id: &str,
        dry_run: bool,
    ) -> Result<Image, CoreError> {
        let image = self.owned_image(account_id, id, "deregister")?;
        if dry_run {
            return Err(CoreError::DryRun);
        }
        self.images.deregister(&image.image_id)?;
        self.tags.forget(&image.image_id)?;
        tracing::info!(image_id = %image.image_id, "image deregistered");
        Ok(image)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::core::fake::{system_account, test_cloud, FakeCluster};

    #[test]
    fn only_the_owner_deregisters_and_others_see_public_images() {
        let (cloud, _dir) = test_cloud(Arc::new(FakeCluster::new(1, 1)));
        let me = system_account(&cloud);
        cloud.accounts.create("alice").expect("alice");
        let alice = cloud.accounts.find("alice").expect("alice").account_id;
        // The test image is public: Alice sees and launches it, but it is
        // not hers to deregister.
        assert!(cloud.visible_image(&alice, "ami-00000001").is_ok());
        assert!(cloud
            .launchable_image(&alice, "ami-00000001", ImageKind::Kernel)
            .is_err());
        assert!(matches!(
            cloud.deregister_image(&alice, "ami-00000001", false),
            Err(CoreError::Unauthorized(_))
        ));
        assert!(matches!(
            cloud.visible_image(&me, "ami-zz"),
            Err(CoreError::Malformed { .. })
        ));
        assert_eq!(
            cloud.deregister_image(&me, "ami-00000001", true).err(),
            Some(CoreError::DryRun)
        );
        cloud
            .deregister_image(&me, "ami-00000001", false)
            .expect("the owner");
        assert!(matches!(
            cloud.visible_image(&me, "ami-00000001"),
            Err(CoreError::NotFound { .. })
        ));
    }
}
