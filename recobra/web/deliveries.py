"""Delivery reports from mail providers, sent by the operator's glue (SES, SendGrid,
Postmark ... webhooks differ; each maps to one call here)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI
from pydantic import BaseModel, Field, model_validator

from recobra.web.auth import require_api_key
from recobra.web.problems import Problem
from recobra.web.services import Services, get_services


class BounceIn(BaseModel):
    """Which message bounced: the provider's message id, or Recobra's message key."""

    provider_id: str | None = Field(default=None, max_length=200)
    key: str | None = Field(default=None, max_length=240)
    reason: str = Field(min_length=1, max_length=500)

    @model_validator(mode="after")
    def _one_reference(self) -> BounceIn:
        if (self.provider_id is None) == (self.key is None):
            raise ValueError("give exactly one of provider_id and key")
        return self


class BounceOut(BaseModel):
    key: str
    status: str


router = APIRouter(prefix="/api/v1", tags=["messages"], dependencies=[Depends(require_api_key)])


@router.post("/messages/bounces")
def report_bounce(bounce: BounceIn, svc: Annotated[Services, Depends(get_services)]) -> BounceOut:
    """A provider could not deliver a message it had accepted: it becomes 'bounced'."""
    with svc.store.unit_of_work() as uow:
        key = uow.record_bounce(
            provider_id=bounce.provider_id, key=bounce.key, reason=bounce.reason, at=svc.now()
        )
        uow.commit()
    if key is None:
        raise Problem(404, "Unknown message", "no message with that provider id or key")
    return BounceOut(key=key, status="bounced")


def include(app: FastAPI) -> None:
    app.include_router(router)
