"""One bridged call: the SIP dialog, the RTP session and the agent bridge, and the tasks that
move audio and events between them until one side ends the call.

Audio path (per 20 ms frame): RTP payload → ``bridge.send_audio_nowait`` unchanged when the
call is G.711 (the bridges speak the call's law), or decoded G.722 → 8 kHz → the bridge's law
(or, on a wideband call — a bridge that ``accepts_wideband`` — the decoded 16 kHz PCM as it is).
Agent audio → ``media.play`` (pass-through) or ``play_pcm`` (G.722 calls: the bridge's law at
8 kHz, or 16 kHz PCM on a wideband call, which the playout only encodes). Nothing else sits in
between, not even a task: both directions run synchronously in the receive callbacks (the
"per-frame fast path" of ``bridges/base.py``); the two pump tasks carry the other events.
One exception: after a delayed offer the bridge is started before the caller has chosen a
codec, so a G.711 call may end up in a different law from the bridge's; its frames then go
through PCM16 both ways (A-law ↔ μ-law).
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from telepath.bridges.base import (
    AgentAudio,
    AgentBridge,
    AgentClear,
    AgentConnected,
    AgentDisconnected,
    AgentError,
    AgentHangup,
    AgentMark,
    AgentReconnected,
    AgentTranscript,
    AgentTransfer,
    BridgeReason,
    Codec,
)
from telepath.calls.model import CallRecord, DisconnectReason, Turn, final_status
from telepath.rtp import g711
from telepath.rtp.playout import MAX_QUEUED_MARK_CHARS, MAX_QUEUED_MARKS, PlayoutOverflow
from telepath.rtp.resample import Resampler
from telepath.sdp.model import is_hold_address
from telepath.sdp.negotiate import NegotiatedMedia
from telepath.sip.errors import SipParseError
from telepath.sip.uri import transfer_target
from telepath.transport.media_session import (
    AudioReceived,
    DtmfReceived,
    MarkPlayed,
    MediaEnded,
    MediaEndReason,
    MediaSession,
)

log = logging.getLogger(__name__)

_VOICE_RMS = 500  # PCM16 RMS above which a caller frame counts as speech (turn detection)
_TURN_GAP_S = 0.6  # silence that separates turns
#: Every media mark's name starts with whose it is: the agent's (its own name follows, echoed
#: to it as it was) or call control's own (a pending transfer's end of announcement, never
#: passed to the agent). Both are tagged, so no agent mark name — any JSON string, a NUL or
#: our own tag included — can pass for one of ours (the agent's is echoed whatever its name,
#: providers.md §4.3).
_AGENT_MARK = "a"
_OWN_MARK = "o"
#: How long a call's end waits for the agent's close (a hung agent, or a bridge of a custom
#: factory, may never finish it): the "5 s" the drain gives the calls it ends (manager.py).
AGENT_CLOSE_S = 5.0
#: The share of it that telling the agent how the transfer that ended the call went may take:
#: an agent that stopped reading holds that send, and the bridge's close must still run.
TRANSFER_RESULT_S = 1.0
#: How long our REFER, once accepted (2xx), waits for its first NOTIFY before the transfer
#: counts as failed: 64*T1, as a subscriber's Timer N after which a subscription that never got
#: a NOTIFY is taken as failed (RFC 6665 §4.1.2.4); a REFER's is implicit (RFC 3515 §2.4.4).
#: Once a NOTIFY came, the subscription lives and the outcome is awaited (a target may ring).
REFER_NOTIFY_WAIT_S = 32.0
#: How long a transfer whose NOTIFYs said only "trying"/"ringing" waits for its outcome when
#: the NOTIFY gave no ``expires`` (RFC 6665 §8.2.3 has the notifier say how long its
#: subscription lives; with it, we wait that long and ``REFER_NOTIFY_WAIT_S`` more for the
#: NOTIFY that ends it). Decision: three minutes, longer than carriers let a target ring.
REFER_OUTCOME_WAIT_S = 180.0


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass
class CallEnd:
    """Why and how the call ended, and when: the moment its end was decided (the record's end
    time, which the billed duration runs to — not the end of the teardown that follows)."""

    reason: DisconnectReason
    error: str | None = None
    send_bye: bool = True
    at: datetime = field(default_factory=_utcnow)


@dataclass
class TurnTracker:
    """Measures turns at the gateway: caller speech (by energy) and agent audio bursts.

    Turns are numbered in the order they started, whatever the order they close in: a caller
    turn closes after the turn gap, an agent turn only when the agent's next burst starts (or
    at a barge-in, or at the end), so an agent turn may close after a later caller turn.
    """

    turns: list[Turn] = field(default_factory=list)
    last_caller_voice: float | None = None
    caller_turn_start: float | None = None
    agent_turn_start: float | None = None
    # When the agent audio sent so far ends playing (estimated: each chunk plays after the one
    # before it, or at once when the queue ran dry): turns are as the caller hears them, not
    # as the audio arrives, which runs ahead of the playout.
    agent_playout_end: float = 0.0
    agent_audio_ms: float = 0.0
    agent_processing_ms: int = 0  # of the open agent turn
    # The caller's last voiced frame no agent turn has answered yet: a second agent burst with
    # no caller speech since the first measures no response time.
    unanswered_voice: float | None = None
    _starts: list[float] = field(default_factory=list, repr=False)  # of ``turns``, in order

    def caller_frame(self, now: float, voiced: bool) -> None:
        """A caller frame arrived.

        A pause over the turn gap ends the caller's turn whether or not frames arrive in it: a
        caller with silence suppression sends nothing, or only comfort noise (RFC 3389, which
        is not played and so never reaches here), while it is quiet (RFC 3551 §4.1), so the
        next voiced frame, not an unvoiced one, may be the first to see the pause.
        """
        if voiced:
            last = self.last_caller_voice
            if self.caller_turn_start is not None and last is not None and now - last > _TURN_GAP_S:
                self._close_caller_turn()  # at its last voiced frame, before this pause
            if self.caller_turn_start is None:
                self.caller_turn_start = now
            self.last_caller_voice = now
            self.unanswered_voice = now
        elif (
            self.caller_turn_start is not None
            and self.last_caller_voice is not None
            and now - self.last_caller_voice > _TURN_GAP_S
        ):
            self._close_caller_turn()

    def agent_audio(self, now: float, ms: float) -> None:
        """Agent audio arrived from the bridge (``ms`` of it, queued behind what is queued).

        A new turn starts when the caller hears a pause over the turn gap: this audio plays at
        once, over the gap after the previous audio's playout end. Audio that arrives while
        earlier audio is still playing plays right after it: the same turn, however long after
        the previous chunk it arrived.
        """
        if self.agent_turn_start is None or now - self.agent_playout_end > _TURN_GAP_S:
            self.finish_agent_turn()
            self.agent_turn_start = now
            self.agent_audio_ms = 0.0
            voice = self.unanswered_voice
            self.agent_processing_ms = 0
            if voice is not None and now > voice:
                self.agent_processing_ms = round((now - voice) * 1000)
            self.unanswered_voice = None
            end = now  # the queue ran dry or was flushed: this plays at once
        else:
            end = self.agent_playout_end
            if now > end:
                end = now
        self.agent_playout_end = end + ms / 1000
        self.agent_audio_ms += ms

    def finish_agent_turn(self, unplayed_ms: float = 0.0) -> None:
        """Close the current agent turn, if any.

        ``unplayed_ms``: audio of this turn still queued, never to be played (barge-in, hang-up):
        a turn lasts as long as the caller heard it, not as long as the agent sent.
        """
        start = self.agent_turn_start
        heard_ms = self.agent_audio_ms - unplayed_ms
        if start is not None and heard_ms > 0:
            self._close("agent", start, heard_ms / 1000, self.agent_processing_ms)
        self.agent_turn_start = None
        self.agent_audio_ms = 0.0
        if heard_ms < 0:
            # More unplayed than this turn sent (or no turn open): the playout ran behind the
            # estimate (audio kept while held), so the queue's head is the tail of the turns
            # before it — the queue plays in order, so the latest audio is the unplayed one.
            self._unplay_closed(-heard_ms)

    def _unplay_closed(self, ms: float) -> None:
        """Take ``ms`` of audio never heard off the closed agent turns, latest first; a turn
        left with none was never heard and goes."""
        for at in range(len(self.turns) - 1, -1, -1):
            if ms <= 0:
                return
            turn = self.turns[at]
            if turn.speaker != "agent":
                continue
            if turn.duration_ms > ms:
                turn.duration_ms -= round(ms)
                return
            ms -= turn.duration_ms
            del self.turns[at]
            del self._starts[at]
            for number, later in enumerate(self.turns[at:], start=at + 1):
                later.turn_number = number

    def finish(self, unplayed_ms: float = 0.0) -> None:
        """The call ended: close the turns still open — a caller still speaking (hanging up
        mid-sentence) keeps a turn up to its last voiced frame. ``unplayed_ms`` as for
        :meth:`finish_agent_turn`."""
        self._close_caller_turn()
        self.finish_agent_turn(unplayed_ms)

    def _close_caller_turn(self) -> None:
        start = self.caller_turn_start
        if start is not None and self.last_caller_voice is not None:
            self._close("caller", start, self.last_caller_voice - start, 0)
        self.caller_turn_start = None

    def _close(self, speaker: str, start: float, seconds: float, processing_ms: int) -> None:
        # In start order (a turn that started at the same time as one closed before it goes
        # after it); the numbers of the turns it goes before move up by one.
        at = bisect.bisect_right(self._starts, start)
        self._starts.insert(at, start)
        self.turns.insert(at, Turn(at + 1, speaker, max(0, round(seconds * 1000)), processing_ms))
        for number, turn in enumerate(self.turns[at + 1 :], start=at + 2):
            turn.turn_number = number

    def ai_latency_ms(self) -> int | None:
        """Mean processing time of agent turns that followed caller speech."""
        values = [t.processing_time_ms for t in self.turns if t.speaker == "agent"]
        values = [v for v in values if v > 0]
        return round(sum(values) / len(values)) if values else None


class Call:
    """A call that is up: owns its media session and bridge until :meth:`run` returns."""

    def __init__(
        self,
        record: CallRecord,
        media: MediaSession,
        bridge: AgentBridge,
        negotiated: NegotiatedMedia,
        *,
        hangup_sip: Callable[[], None],
        refer_sip: Callable[[str], None],
        on_finished: Callable[[Call, CallEnd], Awaitable[None]],
        hangup_drain_max_s: float = 10.0,
        bye_wait_s: float = 2.0,
        max_duration_s: float = 0.0,
        agent_law: Codec | None = None,
        wideband: bool = False,
        on_transfer_failed: Callable[[], None] | None = None,
    ) -> None:
        self.record = record
        # told of each transfer that failed, whichever way (the manager's transfer_failed)
        self._on_transfer_failed = on_transfer_failed
        self.media = media
        self.bridge = bridge
        self.negotiated = negotiated
        self._hangup_sip = hangup_sip
        self._refer_sip = refer_sip
        self._on_finished = on_finished
        self._hangup_drain_max_s = hangup_drain_max_s
        self._bye_wait_s = bye_wait_s
        self._max_duration_s = max_duration_s
        self._loop = asyncio.get_running_loop()
        self._end: asyncio.Future[CallEnd] = self._loop.create_future()
        self.agent_frames_dropped = 0  # caller frames the agent was too slow to take
        self.agent_reconnects = 0  # the agent's connection dropped and was replaced
        self.agent_audio_dropped_ms = 0.0  # agent audio beyond the playout bound
        self._played_base_ms = 0.0
        self._transfer_request: str | None = None  # the agent's pending transfer
        # The mark at the end of the announcement the pending transfer's REFER waits for, and
        # the event its MarkPlayed (played, or cleared by a flush) sets.
        self._announcement_mark: str | None = None
        self._announcement_over = asyncio.Event()
        self._own_marks = 0
        self._refer_due = False  # the pending transfer's REFER waits for its announcement
        self._referred = False  # a REFER of ours went out in this call
        self._refer_accepted = False  # the pending REFER got its 2xx, no final NOTIFY yet
        self._refer_notified = False  # the pending REFER got a NOTIFY
        self._refer_timer: asyncio.TimerHandle | None = None  # REFER_NOTIFY_WAIT_S
        # A transfer's result decided as the call ends: said to the agent before its stop.
        self._transfer_outcome: tuple[str, bool, str] | None = None
        self.turns = TurnTracker()
        self.first_rtp_at: float | None = None
        self.invite_at: float = 0.0
        self._wideband = negotiated.codec.name == "G722"
        self._down = Resampler(16000, 8000) if self._wideband else None
        call_law: Codec = "pcma" if negotiated.codec.name == "PCMA" else "pcmu"
        # The law the bridge speaks: the call's own unless the bridge was started before the
        # codec was known (delayed offer), in which case call control says which one it chose.
        self._law: Codec = agent_law or call_law
        self._transcode = self._wideband or self._law != call_law
        # A wideband call (CallMetadata.wideband): the G.722 caller's 16 kHz audio goes to the
        # bridge as it is, and the agent's comes back as 16 kHz PCM.
        self._wideband_bridge = self._wideband and wideband
        self._agent_bytes_per_ms = 32 if self._wideband_bridge else 8  # PCM16 or G.711
        self.ended: CallEnd | None = None
        # Agent audio still queued when the call's end was decided: never heard (None: not yet).
        self._unplayed_at_end_ms: float | None = None
        self.sip_done = asyncio.Event()
        self._side_tasks: set[asyncio.Task[None]] = set()
        self._tearing_down = False  # ``run`` has cancelled (and awaits) its tasks
        self.sip_call_id = ""
        self.sip_caller_tag = ""  # the INVITE's From tag: with the Call-ID, the SIP trace's key
        self.answer_sdp = b""
        self.session_id = 1
        self.session_version = 1
        self.media_address: str | None = None  # our SDP's address when not the configured one
        # Our 2xx to an offerless re-INVITE carried an offer: its answer comes in the ACK.
        self.offer_in_2xx = False

    # ---------------------------------------------------------------- control from SIP

    def end(
        self, reason: DisconnectReason, error: str | None = None, send_bye: bool = True
    ) -> None:
        """Ask the call to end (idempotent; the first reason wins). The caller stops hearing
        the agent now, not after the teardown (see :meth:`_stop_playout`)."""
        if not self._end.done():
            self._stop_playout()
            self._end.set_result(CallEnd(reason, error, send_bye))

    def _stop_playout(self) -> None:
        """The call's end is decided: stop sending RTP and keep the agent audio still queued
        as never heard (README: audio cut off by a hang-up is not counted). The teardown that
        follows takes up to seconds (the agent's close is bounded at 5 s) and must not go on
        playing: after the caller's BYE, or ours, the session is over (RFC 3261 §15) and the
        caller has left; after a transfer the caller is someone else's. An agent's hang-up, or
        its transfer's REFER, has let its queued audio play out first (``_drain_playout``,
        ``_refer_after_playout``).
        Idempotent: the first sample stands."""
        if self._unplayed_at_end_ms is None:
            self._unplayed_at_end_ms = self.media.queued_ms
            self.media.hold(True)  # no RTP (RTCP goes on, for the BYE at close)

    def playout_ms(self) -> int:
        """Agent audio played since the last flush (the bridges' ``PlayoutProgress``)."""
        return max(0, round(self.media.stats().audio_played_ms - self._played_base_ms))

    def dtmf(self, digit: str) -> None:
        """A digit from SIP INFO."""
        self._side_task(self.bridge.send_dtmf(digit))

    def sip_ended(self) -> None:
        """The SIP dialog is over (BYE answered or timed out): the trace is complete."""
        self.sip_done.set()

    def _side_task(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run a short bridge call owned by this call: cancelled when the call ends. Once the
        teardown began (it cancelled and awaited the set), none starts: it would belong to no
        one and could reach the agent after its ``stop`` (a digit by INFO during the wait for
        our BYE's answer)."""
        if self._tearing_down:
            coro.close()  # never started: no "never awaited" warning
            return
        task = asyncio.get_running_loop().create_task(coro)
        self._side_tasks.add(task)
        task.add_done_callback(self._side_done)

    def _side_done(self, task: asyncio.Task[None]) -> None:
        self._side_tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("bridge call failed: %s", type(task.exception()).__name__)

    def sip_hangup(self, reason: DisconnectReason, error: str | None = None) -> None:
        """The dialog ended from the carrier's side: end with ``reason``, no BYE of ours.

        Decision: a BYE after the carrier accepted our REFER (2xx) and before the transfer's
        final NOTIFY ends the call as ``transferred``, and the agent is told it worked. The
        carrier has taken the caller off our leg: a blind transfer's transferee may end our
        dialog before the outcome is known, and the final NOTIFY may trail the BYE — the BYE
        ends only the dialog's INVITE usage, the REFER's subscription may go on reporting (RFC
        5057 §3.1, §4.1), but we keep no subscription past the call, so it can no longer reach
        us. A caller who hangs up while the target rings reads so too: the agent's part ended
        with the hand-over."""
        if reason == DisconnectReason.CALLER_HANGUP and self._refer_accepted:
            request = self._finish_transfer()
            if request is not None:
                detail = "the carrier accepted the transfer (SIP 202) and ended our call"
                self._transfer_outcome = (request, True, detail)
            self.end(DisconnectReason.TRANSFERRED, send_bye=False)
            return
        self.end(reason, error, send_bye=False)

    def refer_update(self, status: int, final: bool, expires: int | None = None) -> None:
        """Progress of our REFER (RFC 3515): its own 2xx (accepted; not final), then its
        NOTIFYs' sipfrag statuses. A 2xx final NOTIFY means the carrier took the caller; a 1xx
        one (the subscription terminated before an outcome) that the transfer failed.

        A 1xx NOTIFY keeps the transfer pending for as long as its subscription lives
        (``expires``, at most ``REFER_OUTCOME_WAIT_S``, and that when it gives none): a
        subscription that runs out without the NOTIFY that ends it has no outcome to report
        (RFC 6665 §4.1.2.4), and the transfer counts as failed rather than blocking every later
        one."""
        if not final:
            if 200 <= status < 300:  # the REFER's 2xx (a NOTIFY's 2xx is final)
                self._refer_accepted = True
                if not self._refer_notified and self._refer_timer is None:
                    self._refer_timer = self._loop.call_later(
                        REFER_NOTIFY_WAIT_S, self._refer_unanswered
                    )
            elif self._transfer_request is not None and not self._end.done():
                # a 1xx NOTIFY of the pending transfer: the subscription lives, the outcome
                # will come. (A late one of a transfer already decided, or one arriving while
                # the call ends, changes nothing: it would disarm the next transfer's wait, or
                # keep the ended call alive on a timer.)
                self._refer_notified = True
                self._stop_refer_timer()
                wait = REFER_OUTCOME_WAIT_S
                if expires is not None:  # as the notifier says, within our own bound
                    wait = min(expires, REFER_OUTCOME_WAIT_S) + REFER_NOTIFY_WAIT_S
                self._refer_timer = self._loop.call_later(
                    wait, self._refer_unanswered, f"SIP {status}"
                )
            return
        request = self._finish_transfer()
        ok = 200 <= status < 300
        if ok and self._referred:
            # The result goes to the agent before its stop (``_close``); a success after the
            # wait ran out (the agent was told it failed) still means the caller has gone.
            if request is not None:
                self._transfer_outcome = (request, True, f"SIP {status}")
            self.end(DisconnectReason.TRANSFERRED)
        elif request is not None:
            self._transfer_failed()
            detail = f"SIP {status}"
            if status < 200:
                detail = f"the carrier's subscription ended with no outcome (last {detail})"
            self._side_task(self.bridge.send_transfer_result(request, ok, detail))

    def _finish_transfer(self) -> str | None:
        """The pending transfer is decided: forget it; returns its request id, if any."""
        request, self._transfer_request = self._transfer_request, None
        self._refer_accepted = self._refer_notified = False
        self._stop_refer_timer()
        return request

    def _transfer_failed(self) -> None:
        if self._on_transfer_failed is not None:
            self._on_transfer_failed()

    def _stop_refer_timer(self) -> None:
        if self._refer_timer is not None:
            self._refer_timer.cancel()
            self._refer_timer = None

    def _refer_unanswered(self, last: str | None = None) -> None:
        """``REFER_NOTIFY_WAIT_S`` after the carrier accepted our REFER and no NOTIFY (or, with
        ``last``, the sipfrag of the last progress NOTIFY, its subscription's life after it and
        no outcome): the transfer failed (else it would stay pending, and every later transfer
        of the call be refused as "transfer in progress"). A BYE after this is the caller's
        own."""
        self._refer_timer = None
        request = self._finish_transfer()
        log.warning("call %s: no outcome for our REFER: transfer taken as failed", self.record.id)
        if request is not None:
            self._transfer_failed()
            if last is None:
                detail = f"no NOTIFY from the carrier within {REFER_NOTIFY_WAIT_S:g} s"
            else:
                detail = f"the carrier's subscription ran out with no outcome (last {last})"
            self._side_task(self.bridge.send_transfer_result(request, False, detail))

    def update_media(self, negotiated: NegotiatedMedia) -> None:
        """A re-INVITE/UPDATE changed the media: follow address, hold state, whether the peer
        sends, the payload types each way (the codec's on received packets too: RFC 3264 §5.1,
        our SDP's numbers, which a new offer/answer may change) and the peer's SRTP key. An
        old-style hold's ``c=0.0.0.0`` (RFC 3264 §8.4) keeps the address we know: media stays
        latched to it, and it resumes there."""
        self.negotiated = negotiated
        if negotiated.srtp is not None:
            self.media.rekey(negotiated.srtp)
        if negotiated.remote_port and not is_hold_address(negotiated.remote_address):
            rtcp = negotiated.rtcp_destination  # a=rtcp's address and port (RFC 3605 §2.1)
            self.media.update_remote((negotiated.remote_address, negotiated.remote_port), rtcp)
        # Held for good once the end is decided (_stop_playout): a re-INVITE or an ACK's
        # answer crossing our BYE must not send the caller, who has left, the queued audio.
        ended = self._unplayed_at_end_ms is not None
        self.media.hold(ended or negotiated.on_hold or negotiated.remote_port == 0)
        self.media.expect_inbound(negotiated.may_receive)  # not from an a=recvonly peer
        self.media.set_dtmf_payload_type(
            negotiated.dtmf_payload_type, negotiated.recv_dtmf_payload_type
        )
        self.media.set_recv_payload_type(negotiated.recv_payload_type)

    # ---------------------------------------------------------------- the call's life

    async def run(self) -> None:
        """Pump audio and events until the call ends, then release everything."""
        pumps = [
            asyncio.create_task(self._media_pump(), name=f"media-{self.record.id}"),
            asyncio.create_task(self._agent_pump(), name=f"agent-{self.record.id}"),
        ]
        for pump in pumps:
            pump.add_done_callback(self._pump_done)
        limit = None
        if self._max_duration_s > 0:  # counted from here, i.e. from the answer
            limit = self._loop.call_later(
                self._max_duration_s,
                self.end,
                DisconnectReason.MAX_DURATION,
                f"call longer than {self._max_duration_s:g} s",
            )
        try:
            end = await self._end
        except asyncio.CancelledError:
            end = CallEnd(DisconnectReason.SHUTDOWN)
        finally:
            self._stop_playout()  # cancelled without end(): stop it here
            if limit is not None:
                limit.cancel()
            self._stop_refer_timer()
            self.media.set_audio_sink(None)
            self.bridge.set_audio_sink(None)
            self._tearing_down = True
            tasks = [*pumps, *self._side_tasks]
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        self.ended = end
        await self._close(end)

    def _pump_done(self, task: asyncio.Task[None]) -> None:
        # A bug in a pump must not leave a half-dead call (no media timeout or agent hang-up
        # would ever be acted on): end it, with BYE and a record.
        exc = None if task.cancelled() else task.exception()
        if exc is not None:
            self._internal_error(f"{task.get_name().split('-')[0]} task", exc)

    async def _close(self, end: CallEnd) -> None:
        """Let the agent and the carrier go, then release the media and write the record.

        Bounded to fit the drain's wait for the calls it ends (5 s plus ``bye_wait_s``): the
        agent's close gets ``AGENT_CLOSE_S`` (a transfer's result, sent first, at most
        ``TRANSFER_RESULT_S`` of it), and the wait for the answer to our BYE runs from
        the BYE, beside it. A drain that gives up all the same cancels this task: that cuts
        those two waits short, never the rest — the media is released and the record written
        (reason ``shutdown``) whatever, out of the cancel's reach (``_to_the_end``); cancelled
        there, the record stayed open until the next start closed it as ``lost``.
        """
        if end.send_bye:
            self._hangup_sip()
        bye_answered_by = self._loop.time() + self._bye_wait_s
        try:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(AGENT_CLOSE_S):  # not wait_for: no task for this
                    with contextlib.suppress(TimeoutError):  # the close runs whatever
                        async with asyncio.timeout(TRANSFER_RESULT_S):
                            await self._tell_transfer_outcome()
                    await self.bridge.close(bridge_reason(end.reason))
            if end.send_bye:
                # Let the carrier answer our BYE so the SIP trace in the record is complete.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout_at(bye_answered_by):
                        await self.sip_done.wait()
        finally:
            await _to_the_end(self._finish(end))

    async def _tell_transfer_outcome(self) -> None:
        """The result of the transfer that ended the call, to the agent before its ``stop``
        (a side task for it would be cancelled by the teardown) — as the call's last word:
        ``ending``, so the agent is asked for no reply (one nobody would hear)."""
        outcome = self._transfer_outcome
        if outcome is not None:
            with contextlib.suppress(Exception):  # its failure must not skip the close
                await self.bridge.send_transfer_result(*outcome, ending=True)

    async def _finish(self, end: CallEnd) -> None:
        """Release the media and write the call's record (``_on_finished``)."""
        unplayed_ms = self._unplayed_at_end_ms or 0.0  # sampled when the end was decided
        try:
            stats = await self.media.close()
        except Exception as exc:
            # A bug in the media's close (its ports are released whatever it raises) must not
            # stop the call's end here: the call would stay listed and its record open for good.
            log.error("call %s: media close failed: %s", self.record.id, type(exc).__name__)
            log.debug("call %s: media close failure", self.record.id, exc_info=exc)
            stats = self.media.stats()
        self.turns.finish(unplayed_ms)
        record = self.record
        record.end_time = end.at
        # its final status (the API's, the call.ended webhook's): a Call exists only once
        # answered (CallManager._accept), so ``connected`` when it ended normally (the
        # dashboard's Completed), ``disconnected`` when a failure cut it (Dropped)
        record.status = final_status(end.reason, answered=True)
        record.disconnect_reason = end.reason
        record.error_message = end.error
        m = record.metrics
        # None where nothing was measured (no RTP from the caller; no packet either way)
        m.packet_loss_percent = _rounded(stats.loss_percent, 2)
        m.jitter_ms = _rounded(stats.jitter_ms, 2)
        # µs resolution, as the API reports it: the call.ended webhook and the record agree
        processing = stats.gateway_processing_ms
        m.gateway_processing_ms = _rounded(processing, 3)
        m.gateway_processing_p99_ms = (
            None
            if processing is None
            else round(max(stats.inbound.p99_us, stats.outbound.p99_us) / 1000, 3)
        )
        m.ai_latency_ms = self.turns.ai_latency_ms()
        record.turns = list(self.turns.turns)
        await self._on_finished(self, end)

    async def _media_pump(self) -> None:
        # Caller audio goes to the agent from the RTP receive path from now on (no task
        # wake-up per frame); frames queued before this point are drained below first, without
        # waiting, so they still leave in order. Other media events come through here.
        self.media.set_audio_sink(self._caller_audio_sink)
        async for event in self.media.events():
            if isinstance(event, AudioReceived):
                self._on_caller_audio(event)
            elif isinstance(event, DtmfReceived):
                await self.bridge.send_dtmf(event.digit.key)
            elif isinstance(event, MarkPlayed):
                if event.name.startswith(_AGENT_MARK):
                    await self.bridge.notify_mark(event.name[len(_AGENT_MARK) :])
                elif event.name == self._announcement_mark:  # played, or flushed: over
                    self._announcement_over.set()
            elif isinstance(event, MediaEnded):
                if event.reason == MediaEndReason.MEDIA_TIMEOUT:
                    self.end(DisconnectReason.MEDIA_TIMEOUT, "no RTP from the caller")
                return

    # The sinks run inside the sockets' receive callbacks: a bug there must end this call, not
    # close the socket under it (the event loop's reaction) or reach other calls.

    def _caller_audio_sink(self, event: AudioReceived) -> None:
        try:
            self._on_caller_audio(event)
        except Exception as exc:
            self._internal_error("caller audio", exc)

    def _agent_audio_sink(self, event: AgentAudio) -> None:
        try:
            self._on_agent_audio(event)
        except Exception as exc:
            self._internal_error("agent audio", exc)

    def _internal_error(self, where: str, exc: BaseException) -> None:
        # the exception's text may quote call data: its type at ERROR, the rest at DEBUG
        log.error("call %s: %s failed: %s", self.record.id, where, type(exc).__name__)
        log.debug("call %s: %s failure", self.record.id, where, exc_info=exc)
        self.media.set_audio_sink(None)
        self.bridge.set_audio_sink(None)
        self.end(DisconnectReason.UNKNOWN, "internal error")

    def _on_caller_audio(self, event: AudioReceived) -> None:
        now = self._loop.time()
        if self.first_rtp_at is None and not event.lost:
            self.first_rtp_at = now
            self.record.metrics.carrier_lag_ms = round((now - self.invite_at) * 1000)
        self.turns.caller_frame(now, _voiced(event.pcm))
        if not self.bridge.send_audio_nowait(self._to_agent(event)):
            self.agent_frames_dropped += 1
            if self.agent_frames_dropped == 1:
                log.warning("call %s: agent not reading; dropping caller audio", self.record.id)

    def _on_agent_audio(self, event: AgentAudio) -> None:
        try:
            if self._wideband_bridge:
                self.media.play_pcm(event.payload, 16000)
            elif self._transcode:
                self.media.play_pcm(self._from_agent(event.payload), 8000)
            else:
                self.media.play(event.payload)
        except PlayoutOverflow:
            # Decision: past the playout bound (minutes of audio ahead) the excess is dropped
            # and the call goes on; the agent's later messages (clear, marks, hang-up) still
            # apply. Only an answer longer than the bound loses its tail.
            if not self.agent_audio_dropped_ms:
                log.warning("call %s: agent audio beyond the playout bound dropped", self.record.id)
            self.agent_audio_dropped_ms += len(event.payload) / self._agent_bytes_per_ms
            return
        self.turns.agent_audio(self._loop.time(), len(event.payload) / self._agent_bytes_per_ms)

    def _on_agent_mark(self, name: str) -> bool:
        """Place an agent's mark; False when that ended the call (past the bound)."""
        try:
            self.media.mark(_AGENT_MARK + name)
        except PlayoutOverflow:
            # Decision: an agent with that many marks pending (playout.MAX_QUEUED_MARKS,
            # 10,000, or MAX_QUEUED_MARK_CHARS of their names) is broken: the call ends as a
            # provider protocol error, as for a malformed message. Not dropped and echoed at
            # once: that echo would pass the marks still waiting, out of the order the agent
            # relies on (providers.md §4.3). The mark names (the agent's data) stay out of the
            # message; ending the call logs it once.
            log.warning(
                "call %s: the agent left more marks pending than the playout bound allows: "
                "ending the call",
                self.record.id,
            )
            self.end(
                DisconnectReason.AI_PROVIDER_ERROR,
                f"the agent left more than {MAX_QUEUED_MARKS:,} marks (or "
                f"{MAX_QUEUED_MARK_CHARS:,} characters of their names) waiting for playout",
            )
            return False
        return True

    async def _agent_pump(self) -> None:
        # Agent audio may come straight from the socket's receive path (the bridge keeps the
        # order with the events below); events queued before this point come through here.
        self.bridge.set_audio_sink(self._agent_audio_sink)
        async for event in self.bridge.events():
            if isinstance(event, AgentAudio):
                self._on_agent_audio(event)
            elif isinstance(event, AgentClear):
                unplayed_ms = self.media.queued_ms
                self.media.flush()
                self._played_base_ms = self.media.stats().audio_played_ms
                self.turns.finish_agent_turn(unplayed_ms)
            elif isinstance(event, AgentMark):
                if not self._on_agent_mark(event.name):
                    return  # the call ends: the agent's later events are not taken
            elif isinstance(event, AgentTransfer):
                if self._transfer_request is not None:
                    # One REFER at a time: the NOTIFYs of several REFERs in a dialog are told
                    # apart only by their Event header's id (RFC 3515 §2.4.6), which we do not
                    # track — a second one's results would cross with the first's.
                    self._side_task(
                        self.bridge.send_transfer_result(
                            event.request_id, False, "transfer in progress"
                        )
                    )
                    continue
                try:
                    transfer_target(event.target)  # as ua.refer will parse it
                except SipParseError:  # no sip/sips/tel URI: the agent's to fix
                    self._side_task(
                        self.bridge.send_transfer_result(
                            event.request_id, False, "invalid transfer target"
                        )
                    )
                    continue
                self._transfer_request = event.request_id
                self._refer_due = True
                self._mark_announcement()
                self._side_task(self._refer_after_playout(event.target))
            elif isinstance(event, AgentHangup):
                # Decision: a hang-up asked for while a transfer waits for its announcement
                # (no REFER yet) cancels the transfer: the agent's later word wins, as its
                # hang-up ends a call whatever else it asked before. No REFER goes (else the
                # carrier got a REFER and then our BYE, or the BYE alone, as the two waits
                # raced); the call ends as the hang-up, after the audio as ever. The agent gets
                # no transfer result: nothing is sent to it after its hang-up (the bridge is
                # finished). A REFER already sent is left to the call's end.
                if self._refer_due:
                    self._refer_due = False
                    self._finish_transfer()
                await self._drain_playout()
                # the bridge's reason, by value as for AgentError: agent_hangup, or
                # session_limit when the provider's own maximum session length ended it
                self.end(DisconnectReason(event.reason.value))
                return
            elif isinstance(event, AgentError):
                self.end(DisconnectReason(event.reason.value), event.message)
                return
            elif isinstance(event, AgentDisconnected):
                reason = event.reason
                if reason == BridgeReason.CALLER_HANGUP:
                    return  # we closed it
                # The agent closed without a word of why (no error event): the record and
                # call.error say at least that much, not nothing.
                code = "" if event.code is None else f" ({event.code})"
                self.end(DisconnectReason(reason.value), f"the agent closed the connection{code}")
                return
            elif isinstance(event, AgentTranscript):
                log.debug("transcript %s: %s", event.role, event.text)  # PII: DEBUG only
            elif isinstance(event, AgentReconnected):
                self.agent_reconnects = event.count
                log.info(
                    "call %s: agent reconnected (%d so far, %d messages lost)",
                    self.record.id,
                    event.count,
                    event.dropped,
                )
            elif isinstance(event, AgentConnected):
                continue

    def _mark_announcement(self) -> None:
        """Place a mark of ours at the end of the agent's queued audio (its announcement of
        the transfer just asked for): its ``MarkPlayed`` sets ``_announcement_over``."""
        self._announcement_over.clear()
        self._announcement_mark = None
        if self.media.queued_ms > 0:
            self._own_marks += 1
            self._announcement_mark = f"{_OWN_MARK}{self._own_marks}"
            self.media.mark(self._announcement_mark, bounded=False)  # not crowded out
        else:
            self._announcement_over.set()  # nothing to play

    async def _refer_after_playout(self, target: str) -> None:
        """Send the REFER of the pending transfer once the agent's announcement is over.

        The agent asks for the transfer at the end of its announcement ("I'll put you
        through"), whose audio may still be queued, seconds of it: played first, as before a
        hang-up, so the REFER does not hand the caller over mid-sentence. Waited for as the
        mark at its end (``_mark_announcement``), not as the time it would take: a barge-in's
        flush clears the mark, and the REFER goes at once rather than over the agent's reply
        to the caller; bounded by ``hangup_drain_max_s``. Beside the agent's events, which go
        on meanwhile (another transfer is refused as in progress). A call that ends meanwhile
        (the caller's BYE) cancels this with the call's other side tasks, and the agent's
        hang-up cancels the transfer (``_refer_due``): no REFER then.
        """
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._hangup_drain_max_s):
                await self._announcement_over.wait()
        if self._end.done() or not self._refer_due:
            return  # ended as the wait did (its teardown has yet to cancel this), or cancelled
        self._refer_due = False
        try:
            self._refer_sip(target)
        except Exception as exc:  # a bug: the call ends, as it did when the pump sent it
            self._internal_error("transfer", exc)
            return
        self._referred = True

    async def _drain_playout(self) -> None:
        # Queued audio plays out in real time: wait that long (bounded: hangup_drain_max_s,
        # before an agent's hang-up), plus two frames.
        if self.media.queued_ms > 0:
            await asyncio.sleep(min(self.media.queued_ms / 1000 + 0.04, self._hangup_drain_max_s))

    def _to_agent(self, event: AudioReceived) -> bytes:
        if not self._transcode:
            return event.payload
        if self._wideband_bridge:
            return event.pcm
        pcm = self._down.process(event.pcm) if self._down is not None else event.pcm
        return g711.pcm16_to_ulaw(pcm) if self._law == "pcmu" else g711.pcm16_to_alaw(pcm)

    def _from_agent(self, payload: bytes) -> bytes:
        return g711.ulaw_to_pcm16(payload) if self._law == "pcmu" else g711.alaw_to_pcm16(payload)


async def _to_the_end(coro: Coroutine[Any, Any, None]) -> None:
    """Run ``coro`` to its end even if the awaiting task is cancelled meanwhile (once: the
    drain cancels a call's task once, then waits for it), and raise the cancellation after."""
    task = asyncio.get_running_loop().create_task(coro)
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        await asyncio.wait({task})
        raise


def _rounded(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def _voiced(pcm: bytes) -> bool:
    """Whether a PCM16 frame's RMS (over every sample) is above the speech threshold."""
    # Every sample, not a stride: every 8th sample of a 1 kHz tone at 8 kHz is the same point
    # of its cycle, so a stride of 8 measured a test tone as silence.
    return g711.pcm16_rms(pcm) > _VOICE_RMS


def bridge_reason(reason: DisconnectReason) -> BridgeReason:
    """A call's end as the agent is told it (custom agents' ``stop.reason``): the same value
    (README: one vocabulary); ``unknown`` for ``lost``, which no live call ends with."""
    try:
        return BridgeReason(reason.value)
    except ValueError:
        return BridgeReason.UNKNOWN
