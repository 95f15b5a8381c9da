-- Bulk sends: each email of a mass email (and the other bulk sources) names its campaign, so the
-- query API can list a campaign's emails and count what became of them.

ALTER TABLE emails ADD COLUMN campaign_id text;
CREATE INDEX emails_campaign ON emails (org_id, campaign_id, email_id) WHERE campaign_id IS NOT NULL;
