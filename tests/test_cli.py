from sqlmodel import select

from admin.users import verify_password
from models import AdminUser, Enrollment, EnrollmentSource, EnrollmentStatus
from tests.factories import STOPPED_AT, make_case, make_stopped_enrollment


def enrollments(session):
    session.expire_all()
    return session.exec(select(Enrollment)).all()


def test_enroll_makes_a_pending_enrollment_in_e164(runner, session):
    case = make_case(session, case_number="CS-000777", language="es")
    result = runner.invoke(args=["enroll", "cs-000777", "(617) 555-0134"])
    assert result.exit_code == 0, result.output
    assert "pending until the payer replies YES" in result.output
    (enrollment,) = enrollments(session)
    assert (enrollment.case_id, enrollment.phone) == (case.id, "+16175550134")
    assert enrollment.status == EnrollmentStatus.PENDING
    assert enrollment.source == EnrollmentSource.CLI
    assert enrollment.language == "es"
    assert enrollment.confirmed_at is None


def test_confirmed_activates_a_pending_number_and_an_active_one_is_left_alone(runner, session):
    make_case(session, case_number="CS-000778")
    assert runner.invoke(args=["enroll", "CS-000778", "6175550134"]).exit_code == 0
    result = runner.invoke(args=["enroll", "CS-000778", "617-555-0134", "--confirmed"])
    assert result.exit_code == 0 and "Activated" in result.output
    (enrollment,) = enrollments(session)
    assert enrollment.status == EnrollmentStatus.ACTIVE and enrollment.confirmed_at is not None
    confirmed_at = enrollment.confirmed_at
    again = runner.invoke(args=["enroll", "CS-000778", "+1 617 555 0134", "--confirmed"])
    assert again.exit_code == 0 and "already active" in again.output
    (enrollment,) = enrollments(session)
    assert enrollment.confirmed_at == confirmed_at


def test_one_phone_may_be_enrolled_on_several_cases(runner, session):
    make_case(session, case_number="CS-1")
    make_case(session, case_number="CS-2")
    for number in ("CS-1", "CS-2"):
        assert runner.invoke(args=["enroll", number, "6175550134", "--confirmed"]).exit_code == 0
    assert len(enrollments(session)) == 2


def test_enroll_refuses_bad_input_with_a_clear_error(runner, session):
    make_case(session, case_number="CS-1")
    bad_phone = runner.invoke(args=["enroll", "CS-1", "555-01"])
    assert bad_phone.exit_code != 0 and "not a" in bad_phone.output
    no_case = runner.invoke(args=["enroll", "CS-404", "6175550134"])
    assert no_case.exit_code != 0 and "no case numbered CS-404" in no_case.output
    missing = runner.invoke(args=["enroll", "CS-1"])
    assert missing.exit_code != 0
    assert enrollments(session) == []


def test_enroll_refuses_numbers_that_cannot_take_texts_saying_why(app, runner, session):
    make_case(session, case_number="CS-1")
    refusals = {
        "+44 20 7946 0958": "is not a North American (+1) number",
        "+52 55 1234 5678": "is not a North American (+1) number",
        "800-555-0134": "is the agency's own number",  # AGENCY_PHONE
        "888-555-0134": "is a toll-free number, which cannot receive these texts",
    }
    for phone, why in refusals.items():
        result = runner.invoke(args=["enroll", "CS-1", phone])
        assert result.exit_code != 0 and why in result.output, (phone, result.output)
    assert enrollments(session) == []
    assert not app.extensions["sms"].sent


def test_the_import_command_refuses_numbers_that_cannot_take_texts(runner, session, tmp_path):
    path = tmp_path / "cases.csv"
    path.write_text(
        "case_number,payer_name,phone,language,amount_due,balance,next_due_date,timezone\n"
        "CS-000002,Ana Rivera,(617) 555-0134,en,10.00,100.00,,\n"
        "CS-000003,Bo Lee,800-555-0134,en,10.00,100.00,,\n"
    )
    result = runner.invoke(args=["cases", "import", str(path)])
    assert result.exit_code != 0
    assert "line 3: phone (800) 555-0134 is the agency's own number" in result.output
    assert "nothing was imported" in result.output
    assert enrollments(session) == []


def test_create_user_asks_for_the_password_and_stores_only_a_hash(runner, session):
    password = "correct horse battery"
    result = runner.invoke(
        args=["admin", "create-user", "Staff@Agency.gov", "--role", "staff"],
        input=f"{password}\n{password}\n",
    )
    assert result.exit_code == 0, result.output
    user = session.exec(select(AdminUser)).one()
    assert user.email == "staff@agency.gov" and user.role == "staff"
    assert password not in user.password_hash
    assert verify_password(user.password_hash, password)
    assert not verify_password(user.password_hash, "wrong password!")


def test_create_user_refuses_a_short_password_and_a_duplicate(runner, session):
    short = runner.invoke(args=["admin", "create-user", "a@b.gov"], input="short\nshort\n")
    assert short.exit_code != 0 and "at least 12" in short.output
    pw = "long enough password"
    assert (
        runner.invoke(args=["admin", "create-user", "a@b.gov"], input=f"{pw}\n{pw}\n").exit_code
        == 0
    )
    dup = runner.invoke(args=["admin", "create-user", "A@b.gov"], input=f"{pw}\n{pw}\n")
    assert dup.exit_code != 0 and "already exists" in dup.output
    assert len(session.exec(select(AdminUser)).all()) == 1


def test_every_command_has_help(runner):
    for args in (
        ["cases", "import"],
        ["enroll"],
        ["admin", "create-user"],
        ["seed-demo"],
        ["db", "upgrade"],
    ):
        result = runner.invoke(args=[*args, "--help"])
        assert result.exit_code == 0 and "Usage:" in result.output, args


def test_seed_demo_adds_cases_cards_and_appointments_once(runner, session):
    from models import Appointment, CardOnFile, Case

    first = runner.invoke(args=["seed-demo"])
    assert first.exit_code == 0, first.output
    cases = session.exec(select(Case)).all()
    assert len(cases) >= 4
    cards = session.exec(select(CardOnFile)).all()
    assert {card.last4 for card in cards} >= {"4242", "4444"}
    assert all(card.payment_method_id and card.customer_id for card in cards)
    assert session.exec(select(Appointment)).all()
    second = runner.invoke(args=["seed-demo"])
    assert second.exit_code == 0 and "0 new case(s)" in second.output
    session.expire_all()
    assert len(session.exec(select(Case)).all()) == len(cases)


def test_invite_pending_texts_each_uninvited_pending_number_once(app, runner, session, daytime):
    from tests.factories import make_enrollment

    case = make_case(session, case_number="CS-004821", language="es")
    make_enrollment(session, case, "+16175550134", status=EnrollmentStatus.PENDING)
    make_enrollment(session, make_case(session), "+16175550199")  # active: not invited again
    result = runner.invoke(args=["enroll", "--invite-pending"])
    assert result.exit_code == 0, result.output
    assert "Invited 1 pending number(s)" in result.output
    (sent,) = app.extensions["sms"].sent
    assert sent.to == "+16175550134"
    assert "4821" in sent.body and "SI" in sent.body.upper()
    from models import ConversationTurn

    (turn,) = session.exec(select(ConversationTurn)).all()
    assert (turn.case_id, turn.direction, turn.body) == (case.id, "outbound", sent.body)
    assert turn.provider_message_id == sent.sid
    again = runner.invoke(args=["enroll", "--invite-pending"])
    assert "Invited 0 pending number(s)" in again.output
    assert len(app.extensions["sms"].sent) == 1


def test_an_imported_number_that_opted_out_elsewhere_is_never_invited(
    app, runner, session, tmp_path, daytime
):
    first = make_stopped_enrollment(session, make_case(session, case_number="CS-000001"))
    path = tmp_path / "cases.csv"
    path.write_text(
        "case_number,payer_name,phone,language,amount_due,balance,next_due_date,timezone\n"
        "CS-000002,Ana Rivera,(617) 555-0134,en,10.00,100.00,,\n"
        "CS-000003,Bo Lee,(617) 555-0199,en,10.00,100.00,,\n"
    )
    imported = runner.invoke(args=["cases", "import", str(path)])
    assert imported.exit_code == 0, imported.output
    assert "1 pending enrollment(s) added" in imported.output
    assert "1 number(s) opted out of texts earlier" in imported.output

    result = runner.invoke(args=["enroll", "--invite-pending"])
    assert result.exit_code == 0, result.output
    assert "Invited 1 pending number(s)" in result.output
    assert [sms.to for sms in app.extensions["sms"].sent] == ["+16175550199"]
    session.expire_all()
    kept = session.get(Enrollment, first.id)
    assert (kept.status, kept.opted_out_at, kept.status_reason) == (
        EnrollmentStatus.OPTED_OUT,
        STOPPED_AT,
        "opted out by text",
    )
    added = session.exec(
        select(Enrollment).where(Enrollment.phone == "+16175550134", Enrollment.id != first.id)
    ).one()
    assert added.status == EnrollmentStatus.OPTED_OUT and added.invited_at is None
    assert "2026-03-02" in added.status_reason and "START" in added.status_reason


def stranger_texts(app, body: str, phone: str = "+16175550134") -> None:
    """A text from a number on no case, signed as the console backend signs the simulator's."""
    import hashlib

    from tests.sms_helpers import inbound_params, post_signed

    token = hashlib.sha256(f"console:{app.config['SECRET_KEY']}".encode()).hexdigest()
    response = post_signed(app.test_client(), "/sms/inbound", inbound_params(body, phone), token)
    assert response.status_code == 200


def test_a_number_that_texted_stop_while_on_no_case_is_never_invited(
    app, runner, session, tmp_path
):
    stranger_texts(app, "STOP")
    path = tmp_path / "cases.csv"
    path.write_text(
        "case_number,payer_name,phone,language,amount_due,balance,next_due_date,timezone\n"
        "CS-000002,Ana Rivera,(617) 555-0134,en,10.00,100.00,,\n"
    )
    imported = runner.invoke(args=["cases", "import", str(path)])
    assert imported.exit_code == 0, imported.output
    assert "1 number(s) opted out of texts earlier" in imported.output
    (added,) = enrollments(session)
    assert added.status == EnrollmentStatus.OPTED_OUT and "START" in added.status_reason

    make_case(session, case_number="CS-000003")
    enrolled = runner.invoke(args=["enroll", "CS-000003", "6175550134", "--confirmed"])
    assert enrolled.exit_code == 1 and "opted out of texts on " in enrolled.output
    invited = runner.invoke(args=["enroll", "--invite-pending"])
    assert "Invited 0 pending number(s)" in invited.output
    assert {e.status for e in enrollments(session)} == {EnrollmentStatus.OPTED_OUT}
    assert not app.extensions["sms"].sent


def test_a_number_on_no_case_that_texted_start_after_stop_can_be_enrolled(app, runner, session):
    stranger_texts(app, "STOP")
    stranger_texts(app, "START")
    make_case(session, case_number="CS-000004")
    result = runner.invoke(args=["enroll", "CS-000004", "6175550134"])
    assert result.exit_code == 0, result.output
    (enrollment,) = enrollments(session)
    assert enrollment.status == EnrollmentStatus.PENDING


def test_invite_pending_skips_and_counts_pending_numbers_that_opted_out(app, runner, session):
    from tests.factories import make_enrollment

    make_stopped_enrollment(session, make_case(session))
    make_enrollment(session, make_case(session), status=EnrollmentStatus.PENDING)
    result = runner.invoke(args=["enroll", "--invite-pending"])
    assert result.exit_code == 0, result.output
    assert "Invited 0 pending number(s)" in result.output
    assert "1 not invited: the number opted out of texts" in result.output
    assert not app.extensions["sms"].sent


def test_enroll_cannot_undo_a_stop_even_when_confirmed(app, runner, session):
    case = make_case(session, case_number="CS-000001")
    make_stopped_enrollment(session, case)
    make_case(session, case_number="CS-000002")
    for args in (["CS-000001", "6175550134"], ["CS-000001", "6175550134", "--confirmed"]):
        result = runner.invoke(args=["enroll", *args])
        assert result.exit_code == 1
        assert "opted out of texts on 2026-03-02" in result.output and "START" in result.output
    other = runner.invoke(args=["enroll", "CS-000002", "6175550134", "--confirmed"])
    assert other.exit_code == 1 and "opted out" in other.output
    rows = {e.case_id: e for e in enrollments(session)}
    assert (rows[case.id].status, rows[case.id].opted_out_at) == ("opted_out", STOPPED_AT)
    assert rows[case.id].status_reason == "opted out by text"
    assert {e.status for e in rows.values()} == {EnrollmentStatus.OPTED_OUT}
    assert not app.extensions["sms"].sent
