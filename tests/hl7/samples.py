"""Synthetic HL7 messages (invented patients) used by the unit tests; no dependency on ../shared."""

ORM_V231 = "\r".join(
    [
        "MSH|^~\\&|TESTHIS|WARD7^NORTH|RISENGINE|RAD|20240310080000+0100||ORM^O01|CTRL-1|P|2.3.1||||||8859/1",
        "PID|1||PAT-1^^^TESTHIS^MR~NAT-9^^^STATE^NI||TESTPERSON^ALPHA^B||19700101|F|||1 Test St^^Testtown",
        "PV1|1|O|RAD^^^TEST",
        "ORC|NW|PL-1^TESTHIS|||SC||^^^20240311093000^^R",
        "OBR|1|PL-1^TESTHIS||CTHEAD^CT HEAD^LOCAL|||||||||||||||ACC-1|RP-1|SPS-1||||CT",
        "NTE|1||Fast 4h \\T\\ drink water\\.br\\Bring ID \\F\\ card",
        "ZDS|1.2.826.0.1.3680043.10.999.1^100^Application^DICOM",
    ]
) + "\r"

# OMI with repeated IPC-9 station AE titles, the explicit null and a Z segment.
OMI_V251 = "\r".join(
    [
        "MSH|^~\\&|TESTHIS|WARD7|RISENGINE|RAD|20240310080000||OMI^O23^OMI_O23|CTRL-2|P|2.5.1",
        'PID|||PAT-2^^^TESTHIS^MR||TESTPERSON^BETA||19800202|M|||||""',
        "ORC|NW|PL-2^TESTHIS|||SC",
        "TQ1|||||||20240312100000",
        "OBR|1|PL-2^TESTHIS||MRKNEE^MR KNEE^LOCAL",
        "IPC|ACC-2|RP-2|1.2.826.0.1.3680043.10.999.2|SPS-2|MR||||MR_ROOM1~MR_ROOM2",
    ]
)

# Non-standard delimiters: field '#', component '!', repetition '$', escape '?', subcomponent '%'.
CUSTOM_DELIMITERS = "MSH#!$?%#TESTHIS#WARD7#RIS#RAD#20240310##ADT!A08#CTRL-3#P#2.4\rPID#1##ID-1!!!AUTH%1.2%ISO$ID-2#\r"
