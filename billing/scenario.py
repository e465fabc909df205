"""Builders of credit-control requests, and a small driver of one shard state with a fake clock.

For tests, benchmarks and load generators: the same requests a charging trigger would send,
without the protocol noise. Pure like the rest of the domain: the clock is a value the caller
advances (:meth:`Scenario.advance`), never the system clock.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from billing.charging import handle, provision_subscriber
from billing.protocol import (
    CreditControlAnswer,
    CreditControlRequest,
    PaymentMode,
    RequestedAction,
    RequestType,
    ServiceUsage,
    TariffChangeUsage,
    Units,
    UsedUnits,
)
from billing.state import JournalEntry, ShardState, Subscriber
from billing.tariff import Catalog

UNIT_FIELD_BY_RATING_GROUP = {
    100: "time_s",
    200: "service_units",
    10: "total_octets",
    20: "total_octets",
    300: "service_units",
}


def units(rating_group: int, amount: int) -> Units:
    """``amount`` in the unit kind the templates use for ``rating_group``."""
    name = UNIT_FIELD_BY_RATING_GROUP.get(rating_group, "service_units")
    return Units(**{name: amount})


def entry(
    rating_group: int,
    *,
    request: int | None = None,
    used: int | None = None,
    after: int | None = None,
) -> ServiceUsage:
    """A service entry: ask for ``request`` units (0 = the default quota, None = no request),
    report ``used`` units (and ``after`` units after a tariff switch, reported separately)."""
    reports: list[UsedUnits] = []
    if used is not None:
        change = TariffChangeUsage.BEFORE if after is not None else TariffChangeUsage.INDETERMINATE
        reports.append(UsedUnits(units(rating_group, used), tariff_change_usage=change))
    if after is not None:
        reports.append(
            UsedUnits(units(rating_group, after), tariff_change_usage=TariffChangeUsage.AFTER)
        )
    return ServiceUsage(
        rating_group=rating_group,
        requested=None if request is None else units(rating_group, request),
        used=tuple(reports),
    )


@dataclass
class Scenario:
    """One shard state, a catalog and a clock: ``initial/update/terminate/event`` send requests."""

    catalog: Catalog
    now: datetime
    state: ShardState = field(default_factory=ShardState)
    journal: list[JournalEntry] = field(default_factory=list)
    destination: str | None = "33140000000"

    def advance(self, seconds: float) -> datetime:
        self.now += timedelta(seconds=seconds)
        return self.now

    def subscriber(
        self,
        subscriber_id: str,
        plan_id: str,
        *,
        balance: int = 0,
        credit_limit: int = 0,
        payment_mode: PaymentMode | None = None,
        account_id: str | None = None,
        vshard: int = 0,
    ) -> Subscriber:
        subscriber = provision_subscriber(
            self.state,
            subscriber_id=subscriber_id,
            vshard=vshard,
            plan=self.catalog.get(plan_id),
            payment_mode=payment_mode,
            initial_balance_micros=balance,
            credit_limit_micros=credit_limit,
            currency=None,
            now=self.now,
            account_id=account_id,
        )
        self.collect()
        return subscriber

    def collect(self) -> None:
        """Move the step's journal lines into :attr:`journal` (what persistence would write)."""
        self.journal.extend(self.state.take_changes().journal)

    def send(self, request: CreditControlRequest) -> CreditControlAnswer:
        answer = handle(self.state, request, now=self.now, catalog=self.catalog)
        self.collect()
        return answer

    def request(
        self,
        kind: RequestType,
        session_id: str,
        number: int,
        subscriber_id: str,
        *services: ServiceUsage,
        action: RequestedAction | None = None,
        destination: str | None = None,
        retransmission: bool = False,
    ) -> CreditControlRequest:
        return CreditControlRequest(
            session_id=session_id,
            request_type=kind,
            request_number=number,
            subscriber_id=subscriber_id,
            event_time=self.now,
            services=services,
            requested_action=action,
            destination=destination if destination is not None else self.destination,
            retransmission=retransmission,
        )

    def initial(
        self,
        session_id: str,
        subscriber_id: str,
        *services: ServiceUsage,
        destination: str | None = None,
    ) -> CreditControlAnswer:
        return self.send(
            self.request(
                RequestType.INITIAL,
                session_id,
                0,
                subscriber_id,
                *services,
                destination=destination,
            )
        )

    def update(
        self, session_id: str, number: int, subscriber_id: str, *services: ServiceUsage
    ) -> CreditControlAnswer:
        return self.send(
            self.request(RequestType.UPDATE, session_id, number, subscriber_id, *services)
        )

    def terminate(
        self, session_id: str, number: int, subscriber_id: str, *services: ServiceUsage
    ) -> CreditControlAnswer:
        return self.send(
            self.request(RequestType.TERMINATION, session_id, number, subscriber_id, *services)
        )

    def event(
        self,
        session_id: str,
        subscriber_id: str,
        action: RequestedAction,
        *services: ServiceUsage,
        number: int = 0,
    ) -> CreditControlAnswer:
        return self.send(
            self.request(
                RequestType.EVENT, session_id, number, subscriber_id, *services, action=action
            )
        )
