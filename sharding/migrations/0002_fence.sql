-- 0002: the epoch fence as one function, so a group commit can send its lease check and its
-- writes in one pipeline (one round trip). Never edit once landed.
--
-- billing_fence(vshards, epochs) holds the lease row of every vshard FOR SHARE (a takeover's
-- UPDATE waits until this transaction ends) and raises SQLSTATE 'BF001' naming the first vshard
-- whose stored epoch differs from the caller's (or that has no lease). The commit sends it
-- first: on a stale epoch every later statement of the transaction is skipped, nothing is
-- written, and the error the caller sees is this one.
CREATE FUNCTION billing_fence(p_vshards integer[], p_epochs bigint[]) RETURNS void
LANGUAGE plpgsql AS $fence$
DECLARE
    bad record;
BEGIN
    SELECT w.vshard, w.epoch AS expected, l.epoch AS actual INTO bad
    FROM unnest(p_vshards, p_epochs) AS w(vshard, epoch)
    LEFT JOIN (
        SELECT s.vshard, s.epoch FROM shard_leases s WHERE s.vshard = ANY(p_vshards) FOR SHARE
    ) l ON l.vshard = w.vshard
    WHERE l.epoch IS DISTINCT FROM w.epoch
    ORDER BY w.vshard
    LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'not the owner of vshard %', bad.vshard
            USING ERRCODE = 'BF001',
                  DETAIL = format('%s %s %s', bad.vshard, bad.expected, coalesce(bad.actual::text, '-'));
    END IF;
END
$fence$;
