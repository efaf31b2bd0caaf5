from httpx import AsyncClient


async def test_health_answers_without_database_access(client: AsyncClient) -> None:
    response = await client.get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_me_with_admin_token(client: AsyncClient, admin_headers: dict[str, str]) -> None:
    response = await client.get("/api/v1/auth/me", headers=admin_headers)
    assert response.status_code == 200
    assert response.json()["email"] == "admin@crm.test"
    assert response.json()["is_admin"] is True
