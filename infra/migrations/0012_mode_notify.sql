-- The kill switch reaches every instance at once: each instance keeps one connection LISTENing on
-- `provisioner_traffic_mode` (shared/creation/traffic.py, ModeCache) and reads the switch again when told. The
-- notification is sent by a trigger, so it leaves inside the transaction that changes the row (set_mode,
-- revert_if_due, or an operator's UPDATE by hand) and only when that transaction commits.
CREATE FUNCTION notify_traffic_mode() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('provisioner_traffic_mode', NEW.version::text);
    RETURN NULL;
END
$$;

CREATE TRIGGER system_config_traffic_mode_notify
    AFTER UPDATE ON system_config
    FOR EACH ROW WHEN (NEW.key = 'traffic_mode' AND NEW IS DISTINCT FROM OLD)
    EXECUTE FUNCTION notify_traffic_mode();
