"""Every bad request gets a clear status and a body naming the field."""
import httpx
import pytest

pytestmark = pytest.mark.integration


def post(url, json=None, **kwargs):
    """Input validation only: no LLM explanation (it may still be starting)."""
    if isinstance(json, dict):
        json = {**json, "explain": False}
    return httpx.post(url, json=json, timeout=30, **kwargs)


def fields(response):
    return {f["field"]: f["reason"] for f in response.json()["error"]["fields"]}


def test_malformed_json(recommend_url):
    response = post(recommend_url, content=b'{"user_id": 1, "item_ids": [1,', headers={"content-type": "application/json"})
    assert response.status_code == 422
    assert fields(response) == {"body": "not valid JSON"}


@pytest.mark.parametrize(
    "payload, field, reason",
    [
        ({"item_ids": [1, 2]}, "user_id", "Field required"),
        ({"user_id": 1}, "item_ids", "Field required"),
        ({"user_id": "one", "item_ids": [1]}, "user_id", "Input should be a valid integer"),
        ({"user_id": 1, "item_ids": [1, "two"]}, "item_ids[1]", "Input should be a valid integer"),
        ({"user_id": 1, "item_ids": 5}, "item_ids", "Input should be a valid list"),
        ({"user_id": 1, "item_ids": [1], "k": 0}, "k", "Input should be greater than 0"),
        ({"user_id": 1, "item_ids": [1], "k": -3}, "k", "Input should be greater than 0"),
        ({"user_id": 1, "item_ids": []}, "item_ids", "List should have at least 1 item after validation, not 0"),
        ({"user_id": 1, "item_ids": [1], "colour": "red"}, "colour", "Extra inputs are not permitted"),
    ],
)
def test_invalid_fields(recommend_url, payload, field, reason):
    response = post(recommend_url, json=payload)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == "invalid_request"
    assert fields(response)[field] == reason


def test_oversized_item_list_is_bounded_by_config(recommend_url, serve_config):
    limit = serve_config["applications"][0]["args"]["graph"]["request"]["item_ids"]["max_length"]
    response = post(recommend_url, json={"user_id": 1, "item_ids": list(range(1, limit + 2))})
    assert response.status_code == 422
    assert fields(response) == {"item_ids": f"List should have at most {limit} items after validation, not {limit + 1}"}
    assert post(recommend_url, json={"user_id": 1, "item_ids": list(range(1, limit + 1))}).status_code == 200


def test_duplicate_items_are_rejected(recommend_url):
    response = post(recommend_url, json={"user_id": 1, "item_ids": [4, 5, 4]})
    assert response.status_code == 422
    assert fields(response) == {"item_ids": "duplicate values [4]"}


def test_unknown_user_is_404_naming_it(recommend_url):
    response = post(recommend_url, json={"user_id": 999_999, "item_ids": [1, 2]})
    assert response.status_code == 404
    assert response.json()["error"]["missing"] == {"user_id": [999_999]}


def test_unknown_items_are_404_naming_them(recommend_url):
    response = post(recommend_url, json={"user_id": 1, "item_ids": [1, 70_001, 2, 70_002]})
    assert response.status_code == 404
    assert response.json()["error"]["missing"] == {"item_id": [70_001, 70_002]}
    assert "70001" in response.json()["error"]["message"].replace("_", "")
